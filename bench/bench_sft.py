"""Benchmark: tokens/s of slingshot's SFT step vs transformers' Trainer, same run, same device.

Both train the same freshly built Llama (same seed) on the same packed rows: teacher
chain-of-thought traces rendered with the chat template, packed first-fit into rows of
``--seq`` tokens, ``--batch`` rows per optimizer step, AdamW with warmup + cosine.

* ours: ``slingshot.train.supervised.SupervisedTrainer.train_step`` (block-diagonal
  attention mask, response-only loss normalised over the batch, grad clipping).
* Trainer: ``transformers.Trainer`` on those very rows (input_ids, labels, position_ids;
  transformers detects the position-id resets and builds the packed mask itself).

Tokens/s counts real (non-padding) tokens over the timed steps (after ``--warmup``).
Trainer needs ``accelerate`` (in the ``dev`` extra).

Usage: python bench/bench_sft.py [--steps 8] [--warmup 2] [--seq 512] [--batch 8]
                                 [--hidden 128] [--layers 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No network here: keep transformers/accelerate from reaching for the Hub.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")


def build_data(seq: int, n_examples: int):
    from slingshot.data.synthetic import generate_general_text
    from slingshot.data.tasks import iter_instances
    from slingshot.data.teacher import ProceduralTeacher
    from slingshot.data.tokenizer import train_bpe
    from slingshot.stages.sft import tokenize_records

    teacher = ProceduralTeacher(seed=0)
    families = ["basic_arithmetic", "chain_sum", "gcd", "number_sorting"]
    per = n_examples // len(families)
    records = []
    for family in families:
        for i, entry in enumerate(itertools.islice(iter_instances(family, seed=1), per)):
            trace = teacher.solve(entry)
            records.append({"id": f"{family}:{i}", "prompt": trace.prompt, "response": trace.completion})
    texts = [d["text"] for d in generate_general_text(500, 1)] + [
        r["prompt"] + r["response"] for r in records
    ]
    tokenizer = train_bpe(texts, vocab_size=1024)
    return tokenizer, tokenize_records(tokenizer, records, seq)


def build_model(vocab: int, hidden: int, layers: int, seq: int, pad_id: int, eos_id: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 2),
        num_key_value_heads=max(hidden // 128, 1),
        max_position_embeddings=seq,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from slingshot.config import OptimizerConfig
    from slingshot.data.packing import PackedSFT
    from slingshot.dist import DistEnv
    from slingshot.train.supervised import SupervisedSettings, SupervisedTrainer

    torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    t0 = time.perf_counter()
    tokenizer, examples = build_data(args.seq, n_examples=total * args.batch * 6)
    dist = DistEnv()
    device = dist.device
    opt = OptimizerConfig(lr=1e-3, warmup_steps=2, weight_decay=0.0, grad_clip=1.0)
    settings = SupervisedSettings(
        seq_length=args.seq,
        micro_batch_size=args.batch,
        global_batch_size=args.batch,
        epochs=1.0,
        optimizer=opt,
    )
    model = build_model(
        len(tokenizer), args.hidden, args.layers, args.seq, tokenizer.pad_token_id, tokenizer.eos_token_id
    )
    trainer = SupervisedTrainer(model, examples, settings, dist, tokenizer.pad_token_id)
    if trainer.total_steps < total:
        raise SystemExit(f"only {trainer.total_steps} batches of data; lower --steps or --batch")
    print(f"setup {time.perf_counter() - t0:.1f}s: {len(examples)} examples, device={device}", flush=True)

    def real_tokens(step: int) -> int:
        return sum(len(examples[i].input_ids) for row in trainer.schedule.batch(step) for i in row)

    # ours
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(1, args.warmup + 1):
        trainer.train_step(step)
    sync()
    ours_times: list[float] = []
    ours_loss = 0.0
    for step in range(args.warmup + 1, total + 1):
        start = time.perf_counter()
        ours_loss = trainer.train_step(step)["loss"]
        sync()
        ours_times.append(time.perf_counter() - start)
    ours_s = sum(ours_times)
    timed_tokens = sum(real_tokens(s) for s in range(args.warmup + 1, total + 1))

    # transformers.Trainer on the same rows, in the same order (no shuffling)
    rows = []
    for step in range(1, total + 1):
        for row_ids in trainer.schedule.batch(step):
            row = PackedSFT()
            for i in row_ids:
                row.add(examples[i])
            row.pad_to(args.seq, tokenizer.pad_token_id)
            rows.append({"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids})
    hf_model = build_model(
        len(tokenizer), args.hidden, args.layers, args.seq, tokenizer.pad_token_id, tokenizer.eos_token_id
    )

    class Timer(TrainerCallback):
        """Per-step wall time of the steps after the warm-up."""

        def __init__(self) -> None:
            self.begin = 0.0
            self.times: list[float] = []

        def on_step_begin(self, targs, state, control, **kw):  # noqa: ANN001
            sync()
            self.begin = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):  # noqa: ANN001
            sync()
            if state.global_step > args.warmup:
                self.times.append(time.perf_counter() - self.begin)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=total,
            learning_rate=opt.lr,
            lr_scheduler_type="cosine",
            warmup_steps=opt.warmup_steps,
            weight_decay=0.0,
            max_grad_norm=opt.grad_clip,
            adam_beta1=opt.betas[0],
            adam_beta2=opt.betas[1],
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            use_cpu=device.type == "cpu",
            bf16=device.type == "cuda",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            disable_tqdm=True,
            seed=0,
        )
        hf = Trainer(
            model=hf_model,
            args=targs,
            train_dataset=_ListDataset(rows),
            data_collator=default_data_collator,
            callbacks=[timer],
        )
        hf._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(rows)  # same order
        hf.train()
    hf_s = sum(timer.times)
    assert len(timer.times) == args.steps, timer.times

    # The machine may be shared: the median step is the steadier comparison; the sum is shown too.
    ours_tps = timed_tokens / ours_s
    hf_tps = timed_tokens / hf_s
    ours_med = timed_tokens / (statistics.median(ours_times) * args.steps)
    hf_med = timed_tokens / (statistics.median(timer.times) * args.steps)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)"
    )
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"model: llama hidden={args.hidden} layers={args.layers} vocab={len(tokenizer)}; "
        f"batch={args.batch} rows x seq={args.seq}; timed steps={args.steps} ({timed_tokens} real tokens)"
    )
    print(
        f"slingshot SFT step  : {ours_med:8.0f} tokens/s median step ({ours_tps:8.0f} over all timed steps; "
        f"{ours_s / args.steps * 1000:.1f} ms/step mean, last loss {ours_loss:.3f})"
    )
    print(
        f"transformers.Trainer: {hf_med:8.0f} tokens/s median step ({hf_tps:8.0f} over all timed steps; "
        f"{hf_s / args.steps * 1000:.1f} ms/step mean)"
    )
    print(
        f"ratio slingshot / Trainer: {ours_med / hf_med:.2f}x (median step), {ours_tps / hf_tps:.2f}x (total)"
    )


class _ListDataset:
    """A map-style dataset over prepared rows (Trainer only needs __len__/__getitem__)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


if __name__ == "__main__":
    main()
