"""ProRL step time vs TRL's GRPOTrainer, same settings, same run.

Both sides train the same tiny Llama (built from config, same init) on the same prompts
(chat-templated task questions), with G samples per prompt, the same response length,
temperature, decoupled clip (ε_low, ε_high), β·KL to a reference, AdamW at a constant lr,
one optimizer step per generation batch, on the same device. A step is: generate B·G
responses, score them, reference + policy log-probs, one update.

The reward is the same continuous function on both sides (share of digits in the
decoded response, truncated ones included): an untrained model rarely solves a task, and
a 0/1 reward would leave every group all-equal, which ProRL's dynamic sampling would
(rightly) drop while TRL trains on zero advantages. ProRL runs with max_gen_batches=1,
so neither side re-samples and both train on all B·G responses.
The first step of each side is warm-up and not counted.

    python bench/bench_prorl_step.py                 # CPU-sized defaults
    python bench/bench_prorl_step.py --prompts 16 --samples 8 --max-tokens 128 --hidden 256

``--peer async``: instead of TRL, the same ProRL run with vLLM generating synchronously
(generate, then update, then push) against one-step-async (``rollout.async_steps: 1``: the
engine in its own process generates step t+1 while step t updates). On CPU the async run
gives the engine one core (``VLLM_CPU_OMP_THREADS_BIND``) and the trainer the rest; the
sync run lets each phase use every core. Needs vLLM (``make install-vllm``).

    python bench/bench_prorl_step.py --peer async --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch


def digit_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / max(len(chars), 1)


def use_digit_share_reward() -> None:
    """Score every ProRL rollout by ``digit_share`` instead of the task verifier."""
    from slingshot.train import rl_sampling

    def score_group(entry: dict, rollouts: list[Any], tokenizer: Any, cfg: Any, *_: Any) -> Any:
        # TRL's reward: the same function, on the text TRL decodes (special tokens dropped),
        # truncated responses included (TRL's default), so both sides train on every group.
        texts = [tokenizer.decode(r.completion_ids, skip_special_tokens=True) for r in rollouts]
        return rl_sampling.ScoredGroup(
            entry, list(rollouts), [digit_share(t) for t in texts], [False] * len(texts)
        )

    rl_sampling.score_group = score_group  # type: ignore[assignment]


def _setup(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Task splits, a BPE tokenizer trained on them, and one tiny model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from slingshot.data.tasks import SplitSizes, make_splits
    from slingshot.data.teacher import ProceduralTeacher, task_prompt
    from slingshot.data.tokenizer import save_tokenizer, train_bpe
    from slingshot.models.hf import save_model_dir

    splits = make_splits(
        ["basic_arithmetic"], SplitSizes(train=max(64, a.prompts * a.steps), validation=4, test=4), 0
    )
    teacher = ProceduralTeacher()
    texts = [task_prompt(e) + "\n" + teacher.solve(e).completion for e in splits["train"]]
    tok = train_bpe(texts, vocab_size=512)
    save_tokenizer(tok, root / "tokenizer")
    paths = {}
    for split, entries in splits.items():
        path = root / f"{split}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))
        paths[f"tasks_{split}"] = str(path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=a.hidden,
            intermediate_size=2 * a.hidden,
            num_hidden_layers=a.layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
        )
    )
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    save_model_dir(model, tok, root / "model")
    data = {
        "kind": "data",
        "key": "data",
        "outputs": {"tokenizer_dir": str(root / "tokenizer"), **paths},
    }
    return {"data": data, "model": root / "model", "train": splits["train"]}


def run_prorl(
    a: argparse.Namespace,
    setup: dict[str, Any],
    root: Path,
    rollout: dict[str, Any] | None = None,
    dist: Any = None,
) -> list[float]:
    """Step times of one ProRL run (``dist``: this process's rank of a multi-process run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
    from stages import make_ctx, pipeline_config

    from slingshot.stages import prorl
    from slingshot.tracking import Tracker

    times: dict[int, float] = {}
    parts: dict[int, tuple[float, float]] = {}  # (generation, update) seconds

    class Times(Tracker):
        def __init__(self) -> None:
            super().__init__(None, None)

        def log_metrics(self, metrics: Any, step: int) -> None:
            if "step_time_s" in metrics:
                times[step] = float(metrics["step_time_s"])
                parts[step] = (float(metrics["time_generate_s"]), float(metrics.get("time_update_s", 0.0)))

    use_digit_share_reward()
    cfg = pipeline_config(
        root,
        {
            "stages": {
                "prorl": {
                    "n_samples": a.samples,
                    "batch_prompts": a.prompts,
                    "mini_batch_prompts": a.prompts,  # one optimizer step per generation batch
                    "temperature": a.temperature,
                    "eps_low": a.eps_low,
                    "eps_high": a.eps_high,
                    "entropy_control": {"enabled": False},
                    "kl_coef": a.beta,
                    "kl_kind": "k3",  # TRL's estimator
                    "binary_reward": False,
                    "max_gen_batches": 1,
                    "val_every": 10_000,
                    "val_prompts": 1,
                    "val_samples": 1,
                    "log_every": 1,
                    "optimizer": {"lr": a.lr},
                    "phases": [{"name": "bench", "steps": a.steps, "max_response_tokens": a.max_tokens}],
                    "rollout": rollout or {},
                    "data_parallel": getattr(a, "data_parallel", "auto"),
                }
            }
        },
    )
    ctx = make_ctx(
        root,
        "prorl",
        cfg,
        {"data": setup["data"]},
        stage="prorl-bench",
        phase="bench",
        init_model=str(setup["model"]),
        tracker=Times(),
        dist=dist,
        interval_steps=10_000,
    )
    prorl.run(ctx)
    timed = sorted(parts)[1:]
    if timed:
        generate = statistics.mean(parts[s][0] for s in timed)
        update = statistics.mean(parts[s][1] for s in timed)
        if dist is None or dist.is_main:
            print(f"  {rollout or 'hf'}: generation {generate:.3f} s, update + push {update:.3f} s per step")
    return [times[s] for s in sorted(times)]


def run_trl(a: argparse.Namespace, setup: dict[str, Any], root: Path) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from slingshot.data.teacher import task_prompt
    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.hf import load_causal_lm

    tok = load_tokenizer(setup["model"])
    model = load_causal_lm(setup["model"])
    prompts = [[{"role": "user", "content": task_prompt(e)}] for e in setup["train"]]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [digit_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    args = GRPOConfig(
        output_dir=str(root / "trl"),
        per_device_train_batch_size=a.prompts * a.samples,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=a.samples,
        max_completion_length=a.max_tokens,
        temperature=a.temperature,
        top_p=1.0,
        top_k=0,
        epsilon=a.eps_low,
        epsilon_high=a.eps_high,
        beta=a.beta,
        loss_type="dapo",  # token-mean over the batch, as ProRL's default loss_agg
        scale_rewards="group",
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=a.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        seed=0,
        shuffle_dataset=False,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[StepTimer()],
    )
    trainer.train()
    return times


def compare_sync_async(a: argparse.Namespace, device: str) -> None:
    """ProRL with vLLM, synchronous vs one-step-async, same settings, one after the other."""
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-prorl-async-") as tmp:
        root = Path(tmp)
        setup = _setup(a, root)
        sync = run_prorl(a, setup, root / "sync", {"backend": "vllm"})
        if not torch.cuda.is_available() and cores > 1:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cores - 1)  # the engine process: the last core
            torch.set_num_threads(cores - 1)  # the trainer: the others
        overlapped = run_prorl(a, setup, root / "async", {"backend": "vllm", "async_steps": 1})
        torch.set_num_threads(threads)
    sync_s, async_s = statistics.mean(sync[1:]), statistics.mean(overlapped[1:])
    print(
        f"device: {device}; B={a.prompts} prompts x G={a.samples}, <= {a.max_tokens} response tokens, "
        f"Llama {a.layers}x{a.hidden}, {a.steps - 1} timed steps, vLLM {_vllm_version()}"
    )
    print(
        f"ProRL step, vLLM sync:        {sync_s:.3f} s  (per step: {', '.join(f'{t:.2f}' for t in sync[1:])})"
    )
    print(
        f"ProRL step, vLLM async (1):   {async_s:.3f} s  (per step: {', '.join(f'{t:.2f}' for t in overlapped[1:])})"
    )
    print(f"ratio sync / async: {sync_s / async_s:.2f}x (above 1: one-step-async is faster)")


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--eps-low", type=float, default=0.2)
    p.add_argument("--eps-high", type=float, default=0.4)
    p.add_argument("--beta", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--peer", choices=["trl", "async"], default="trl")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    if a.peer == "async":
        return compare_sync_async(a, device)
    with tempfile.TemporaryDirectory(prefix="bench-prorl-") as tmp:
        root = Path(tmp)
        setup = _setup(a, root)
        ours = run_prorl(a, setup, root / "prorl")
        try:
            theirs = run_trl(a, setup, root / "trl")
        except ImportError as error:
            raise SystemExit(f"TRL is not installed ({error}): pip install trl") from error
    ours_s, theirs_s = statistics.mean(ours[1:]), statistics.mean(theirs[1:])
    print(
        f"device: {device}; B={a.prompts} prompts x G={a.samples}, <= {a.max_tokens} response tokens, "
        f"Llama {a.layers}x{a.hidden}, beta={a.beta}, eps=({a.eps_low}, {a.eps_high}), {a.steps - 1} timed steps"
    )
    print(f"slingshot ProRL step: {ours_s:.3f} s  (per step: {', '.join(f'{t:.2f}' for t in ours[1:])})")
    print(f"TRL GRPOTrainer step: {theirs_s:.3f} s  (per step: {', '.join(f'{t:.2f}' for t in theirs[1:])})")
    print(f"ratio TRL / slingshot: {theirs_s / ours_s:.2f}x (above 1: slingshot is faster)")


if __name__ == "__main__":
    main()
