"""ProRL stage: batches, dynamic sampling, reference anchoring across resumes and resets,
and a short run that raises validation pass@1 of a tiny SFT'd model."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from stages import make_ctx, pipeline_config

from slingshot.checkpoint import CheckpointManager
from slingshot.data.tasks import SplitSizes, TaskFamily, make_splits, register_family
from slingshot.stages import prorl
from slingshot.tracking import Tracker
from slingshot.train import rl_sampling
from slingshot.train.logprobs import token_logprobs
from slingshot.train.rl_batch import build_rl_batch, masked_mean
from slingshot.train.state import read_checkpoint

# Three one-digit addends, "+" only: a validation sum is unseen, but its two sub-steps
# (a + b, then s + c) are each seen many times in training, so what RL sharpens on
# training prompts carries over to held-out ones.
FAMILY = TaskFamily(
    name="add3-test",
    dataset="basic_arithmetic",
    kwargs=dict(
        min_terms=3,
        max_terms=3,
        min_digits=1,
        max_digits=1,
        operators=["+"],
        allow_negation=False,
        allow_parentheses=False,
    ),
    math=True,
)


class Recorder(Tracker):
    """A disabled tracker that keeps the metrics, and can crash the run at a chosen step."""

    def __init__(self, crash_at: int | None = None):
        super().__init__(None, None)
        self.rows: dict[int, dict[str, float]] = {}
        self.crash_at = crash_at

    def log_metrics(self, metrics: Any, step: int) -> None:
        if self.crash_at is not None and step == self.crash_at:
            raise RuntimeError(f"simulated node failure at step {step}")
        self.rows.setdefault(step, {}).update(metrics)


# --------------------------------------------------------------------------- fixtures


def _sft(tokenizer_dir: str, entries: list[dict], out: Path, steps: int = 300, heads: int = 4) -> Path:
    """A tiny Llama trained on the teacher's traces of the family (the SFT stage in small);
    ``heads=2`` gives head_dim 32, the least vLLM's CPU attention takes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from slingshot.data.packing import IGNORE_INDEX, tokenize_sft
    from slingshot.data.teacher import ProceduralTeacher, task_prompt
    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.hf import save_model_dir

    tok = load_tokenizer(tokenizer_dir)
    teacher = ProceduralTeacher()
    examples = []
    for entry in entries:
        trace = teacher.solve(entry)
        answer = trace.completion.split("</think>\n", 1)[1]
        examples.append(tokenize_sft(tok, task_prompt(entry), answer, reasoning=trace.thought))
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            max_position_embeddings=256,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = random.Random(0)
    for step in range(steps):
        batch = rng.sample(examples, 16)
        width = max(len(x.input_ids) for x in batch)
        ids = torch.full((16, width), tok.pad_token_id)
        labels = torch.full((16, width), IGNORE_INDEX)
        attention = torch.zeros((16, width), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, : len(x.input_ids)] = torch.tensor(x.input_ids)
            labels[i, : len(x.labels)] = torch.tensor(x.labels)
            attention[i, : len(x.input_ids)] = 1
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (step + 1) / 20)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model_dir(model, tok, out)


@pytest.fixture(scope="module")
def sft_setup(tmp_path_factory, small_data) -> dict[str, Any]:
    """Task splits of one easy family, a data manifest for them, and a tiny SFT'd model."""
    root = tmp_path_factory.mktemp("prorl")
    register_family(FAMILY)
    splits = make_splits([FAMILY.name], SplitSizes(train=300, validation=40, test=4), 0)
    (root / "tasks").mkdir()
    paths = {}
    for split, entries in splits.items():
        path = root / "tasks" / f"{split}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))
        paths[f"tasks_{split}"] = str(path)
    tokenizer_dir = small_data["outputs"]["tokenizer_dir"]
    data = {"kind": "data", "key": "data", "outputs": {"tokenizer_dir": tokenizer_dir, **paths}}
    model = _sft(tokenizer_dir, splits["train"], root / "sft")
    return {"data": data, "model": model, "splits": splits, "root": root}


def _ctx(tmp: Path, setup: dict[str, Any], tracker: Tracker, steps: int, interval: int = 100, **over: Any):
    prorl_cfg = {
        "n_samples": 8,
        "batch_prompts": 4,
        "mini_batch_prompts": 2,
        "temperature": 1.0,
        "kl_coef": 1e-3,
        "max_gen_batches": 3,
        "val_every": 100,
        "val_prompts": 8,
        "val_samples": 2,
        "val_temperature": 1.0,
        "log_every": 1,
        "optimizer": {"lr": 3e-4},
        "phases": [{"name": "len48", "steps": steps, "max_response_tokens": 48}],
        **over,
    }
    cfg = pipeline_config(tmp, {"stages": {"prorl": prorl_cfg}})
    return make_ctx(
        tmp,
        "prorl",
        cfg,
        {"data": setup["data"]},
        stage="prorl-len48",
        phase="len48",
        init_model=str(setup["model"]),
        tracker=tracker,
        interval_steps=interval,
    )


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- pure pieces


def test_rl_batch_masks_exactly_the_completion_tokens():
    from transformers import LlamaConfig, LlamaForCausalLM

    seqs = [([5, 6, 7], [8, 9]), ([5], [10, 11, 12, 1]), ([4, 4], [])]
    batch = build_rl_batch(seqs, pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 1], [4, 4, 0, 0, 0]]
    # Column t scores token t+1: row 0's completion tokens 8, 9 sit at positions 3, 4.
    assert batch.response_mask.tolist() == [
        [False, False, True, True],
        [True, True, True, True],
        [False, False, False, False],
    ]
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    # Right padding never changes a real token's log-prob: row 0 alone gives the same values.
    alone, _ = token_logprobs(model, torch.tensor([[5, 6, 7, 8, 9]]))
    assert torch.allclose(logp[0], alone[0], atol=1e-6)
    sub = batch.rows(slice(2, 3))
    assert sub.input_ids.shape == (1, 2) and not sub.response_mask.any()
    assert float(masked_mean(torch.ones(3, 4), batch.response_mask)) == 1.0


# --------------------------------------------------------------------------- the stage


def test_dynamic_sampling_never_trains_on_all_equal_groups(tmp_path, sft_setup, monkeypatch):
    trained: list[torch.Tensor] = []
    original = prorl.update_on_groups

    def spy(policy, reference, optimizer, scheduler, train, *args):
        trained.append(train.rewards.clone())
        assert train.batch.size == train.rewards.numel()
        return original(policy, reference, optimizer, scheduler, train, *args)

    monkeypatch.setattr(prorl, "update_on_groups", spy)
    rec = Recorder()
    prorl.run(_ctx(tmp_path, sft_setup, rec, steps=3))
    assert trained, "no update ran"
    for rewards in trained:
        assert rewards.shape[1] == 8 and rewards.shape[0] <= 4
        assert (rewards != rewards[:, :1]).any(dim=1).all(), f"an all-equal group was trained on: {rewards}"
    # The filter had something to drop: some generated group was all-equal.
    assert min(rec.rows[s]["groups_kept_frac"] for s in (1, 2, 3)) < 1.0


def test_a_run_without_learning_signal_warns_counts_and_can_fail(tmp_path, sft_setup, monkeypatch):
    """Every response scores 0 (a model that solves nothing): dynamic sampling drops every
    group at every step. The run warns after no_signal_warn_steps steps in a row, counts the
    steps in its metrics and manifest, and with no_signal_max_steps fails with the message."""
    monkeypatch.setattr(rl_sampling, "reward", lambda *args, **kwargs: 0.0)
    fast = {"max_gen_batches": 1, "val_prompts": 2, "no_signal_warn_steps": 2}
    rec = Recorder()
    with pytest.warns(
        rl_sampling.NoLearningSignalWarning, match="NO LEARNING SIGNAL for 2 consecutive steps"
    ) as seen:
        result = prorl.run(_ctx(tmp_path / "warn", sft_setup, rec, steps=3, **fast))
    assert len(seen) == 1  # once per streak, not every step
    message = str(seen[0].message)
    assert "every response was wrong" in message
    for fix in ("easier prompts", "n_samples", "stronger starting model"):
        assert fix in message
    assert [rec.rows[s]["groups_trained"] for s in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert [rec.rows[s]["no_signal_steps"] for s in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert result.extra["prorl"]["no_signal_steps"] == 3 and result.metrics["no_signal_steps"] == 3.0

    with pytest.raises(rl_sampling.NoLearningSignal, match="NO LEARNING SIGNAL for 2 consecutive steps"):
        prorl.run(_ctx(tmp_path / "fail", sft_setup, Recorder(), steps=3, **fast, no_signal_max_steps=2))


def _probe_kl(policy: torch.nn.Module, reference: torch.nn.Module, probe) -> float:
    with torch.no_grad():
        lp, _ = token_logprobs(policy, probe.input_ids, probe.attention_mask, probe.position_ids)
        ref, _ = token_logprobs(reference, probe.input_ids, probe.attention_mask, probe.position_ids)
    return float(masked_mean(0.5 * (lp - ref).square(), probe.response_mask))


def test_resume_restores_the_reference_and_the_kl(tmp_path, sft_setup, monkeypatch):
    from slingshot.models.hf import load_causal_lm

    # Uninterrupted reference run.
    full = Recorder()
    prorl.run(_ctx(tmp_path / "full", sft_setup, full, steps=4, interval=2))

    # Crash during step 3 (after the step-2 checkpoint), then resume.
    crashed = Recorder(crash_at=3)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        prorl.run(_ctx(tmp_path / "cut", sft_setup, crashed, steps=4, interval=2))
    ckpt_dir = tmp_path / "cut" / "work" / "main" / "prorl-len48" / "checkpoints"
    (ckpt,) = [c for c in CheckpointManager(ckpt_dir).complete() if c.step == 2]
    saved = read_checkpoint(ckpt.path)
    before_policy = load_causal_lm(sft_setup["model"])
    before_policy.load_state_dict(saved["policy"])
    before_ref = load_causal_lm(sft_setup["model"])
    before_ref.load_state_dict(saved["reference"])
    probe = build_rl_batch([([5, 6, 7, 8], [9, 10, 11, 12, 13, 14]), ([20, 21], [22, 23, 24])], 0)
    kl_before = _probe_kl(before_policy, before_ref, probe)
    assert kl_before > 1e-7, "the policy never moved away from its reference: the test cannot tell"

    seen: dict[str, Any] = {}
    original = prorl.update_on_groups

    def spy(policy, reference, *args):
        if not seen:
            seen["policy"], seen["reference"] = _params(policy), _params(reference)
            seen["kl"] = _probe_kl(policy, reference, probe)
        return original(policy, reference, *args)

    monkeypatch.setattr(prorl, "update_on_groups", spy)
    resumed = Recorder()
    prorl.run(_ctx(tmp_path / "cut", sft_setup, resumed, steps=4, interval=2))

    # The resumed reference is the checkpoint's (the SFT start), not the resumed policy.
    for name, value in saved["reference"].items():
        assert torch.equal(seen["reference"][name], value)
    assert any(not torch.equal(seen["reference"][k], seen["policy"][k]) for k in seen["policy"])
    assert seen["kl"] == pytest.approx(kl_before, rel=1e-5)
    # The run's own KL right after the resume is the uninterrupted run's (exact resume), not 0.
    assert resumed.rows[3]["kl_start"] > 1e-7
    assert resumed.rows[3]["kl_start"] == pytest.approx(full.rows[3]["kl_start"], rel=1e-4)
    for key in ("reward_mean", "kl", "loss"):
        assert resumed.rows[4][key] == pytest.approx(full.rows[4][key], rel=1e-4, abs=1e-7)


def test_reference_reset_zeroes_the_kl(tmp_path, sft_setup):
    rec = Recorder()
    reset = {"every_steps": 2, "reset_optimizer": True}
    prorl.run(_ctx(tmp_path, sft_setup, rec, steps=3, reference_reset=reset))
    assert rec.rows[2]["kl_start"] > 1e-7 and rec.rows[2]["ref_reset"] == 1.0
    assert rec.rows[3]["kl_start"] == 0.0  # the first forward after π_ref ← π_θ
    assert rec.rows[3]["resets"] == 1.0 and rec.rows[3]["ref_reset"] == 0.0


def test_the_controller_moves_eps_high_on_answer_diversity_relative_to_step_one(tmp_path, sft_setup):
    # A band of [1.0, 1.0] x step 1's distinct answers per group: every later step below the
    # start raises ε_high by 0.05, above it lowers it, equal leaves it (hand-replayed below).
    control = {
        "signal": "distinct_answers",
        "relative": True,
        "target_low": 1.0,
        "target_high": 1.0,
        "step_size": 0.05,
        "eps_high_min": 0.1,
        "eps_high_max": 0.9,
    }
    rec = Recorder()
    prorl.run(_ctx(tmp_path, sft_setup, rec, steps=4, entropy_control=control))
    distinct = [rec.rows[s]["distinct_answers"] for s in range(1, 5)]
    expected, eps = [], 0.4
    for value in distinct[1:]:
        eps += 0.05 if value < distinct[0] else -0.05 if value > distinct[0] else 0.0
        expected.append(eps)
    assert rec.rows[1]["eps_high"] == pytest.approx(0.4)  # step 1 sets the reference
    assert [rec.rows[s]["eps_high"] for s in range(2, 5)] == pytest.approx(expected)
    assert len(set(distinct)) > 1  # the signal moved, so the controller acted (not a constant run)


def test_kl_coef_zero_runs_without_a_reference(tmp_path, sft_setup, monkeypatch):
    refs: list[Any] = []
    original = prorl.update_on_groups

    def spy(policy, reference, *args):
        refs.append(reference)
        return original(policy, reference, *args)

    monkeypatch.setattr(prorl, "update_on_groups", spy)
    rec = Recorder()
    result = prorl.run(_ctx(tmp_path, sft_setup, rec, steps=1, kl_coef=0.0, top_entropy_q=0.2))
    assert refs == [None] and "kl" not in rec.rows[1]
    assert rec.rows[1]["update_token_frac"] < 0.5  # forking tokens: ~20% of response tokens
    assert Path(result.outputs["model_dir"], "config.json").is_file()


@pytest.mark.slow
def test_short_run_raises_validation_pass_at_1(tmp_path, sft_setup):
    rec = Recorder()
    over = {
        "batch_prompts": 8,
        "mini_batch_prompts": 4,
        "val_every": 10,
        "val_prompts": 40,
        "val_samples": 8,
    }
    prorl.run(_ctx(tmp_path, sft_setup, rec, steps=30, **over))
    curve = {
        s: round(rec.rows[s]["val/pass_at_1"], 4) for s in sorted(rec.rows) if "val/pass_at_1" in rec.rows[s]
    }
    train = [round(rec.rows[s]["pass_rate"], 3) for s in range(1, 31)]
    print(f"validation pass@1 by step: {curve}; training pass rate by step: {train}")
    # 320 validation samples per point (same sampling seed each time): a rise of 0.05 over
    # the last two points is well beyond the noise of one point (~0.025).
    assert (curve[20] + curve[30]) / 2 >= curve[0] + 0.05, curve


# --------------------------------------------------------------------------- user prompt sets


def test_mixed_prompt_stream_follows_the_weights_and_resumes_exactly():
    from slingshot.train.rl_sampling import MixedPromptStream

    tasks = [{"id": f"t{i}", "family": "f"} for i in range(5)]
    mine = [{"id": f"m{i}", "family": "mine", "verifier": "math"} for i in range(3)]
    sources = [("tasks", tasks, 1.0), ("mine", mine, 3.0), ("off", [{"id": "x"}], 0.0)]
    stream = MixedPromptStream(sources, seed=7)
    drawn = stream.take(400)
    share = sum("verifier" in e for e in drawn) / len(drawn)
    assert 0.68 < share < 0.82  # 3 : 1 -> 0.75 (binomial sd ~0.02)
    assert all(e["id"] != "x" for e in drawn)  # a weight-0 source is never drawn
    again = MixedPromptStream(sources, seed=7)
    again.load_state_dict(stream.state_dict())
    assert [e["id"] for e in again.take(20)] == [e["id"] for e in stream.take(20)]


def test_a_run_mixing_a_user_set_with_a_family_logs_per_set_rewards(tmp_path, sft_setup, monkeypatch):
    """A user set scored by a user function, beside the reasoning-gym family: the function is
    called on every finished response of its set, and reward/<set> is exactly its mean."""
    from slingshot.data.prompt_sets import convert_prompt_sets
    from slingshot.data.tasks import load_entries

    (tmp_path / "set_rewards.py").write_text(
        "CALLS = []\n\n"
        "def contains_answer(prompt, response, answer):\n"
        "    value = 1.0 if answer in response else 0.0\n"
        "    CALLS.append((prompt, response, answer, value))\n"
        "    return value\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = load_entries(sft_setup["data"]["outputs"]["tasks_train"])[:20]
    rows_path = tmp_path / "mine.jsonl"
    rows_path.write_text(
        "".join(json.dumps({"problem": e["question"], "solution": int(e["answer"])}) + "\n" for e in rows)
    )
    mine = {
        "name": "mine",
        "path": str(rows_path),
        "prompt_key": "problem",
        "answer_key": "solution",
        "verifier": "set_rewards:contains_answer",
        "weight": 1.0,
    }
    ctx = _ctx(tmp_path / "run", sft_setup, Recorder(), steps=2, datasets=[mine], binary_reward=False)
    converted = convert_prompt_sets(ctx.pipeline, tmp_path / "data")
    ctx.upstream["data"]["outputs"] = {
        **ctx.upstream["data"]["outputs"],
        "prompt_set_mine": converted["mine"].path,
    }
    import set_rewards

    calls_at: dict[int, int] = {}
    rec = ctx.tracker
    original = rec.log_metrics

    def log(metrics, step):  # noqa: ANN001, ANN202
        calls_at.setdefault(step, len(set_rewards.CALLS))
        original(metrics, step)

    monkeypatch.setattr(rec, "log_metrics", log)
    prorl.run(ctx)

    answers = {e["question"]: e["answer"] for e in rows}
    assert set_rewards.CALLS, "the user function was never called"
    for prompt, response, answer, _ in set_rewards.CALLS:
        assert answers[prompt] == answer  # the row's own (numeric, now text) answer
        assert not response.endswith("<|endoftext|>")  # the stop token is no part of the response
    for step in (1, 2):
        row = rec.rows[step]
        # A source no prompt of this step came from logs nothing for it.
        assert row.get("samples/mine", 0) + row.get("samples/tasks", 0) == row["gen_batches"] * 4 * 8
        values = [c[3] for c in set_rewards.CALLS[calls_at.get(step - 1, 0) : calls_at[step]]]
        if "samples/mine" in row:
            assert row["reward/mine"] == pytest.approx(sum(values) / row["samples/mine"])
        else:
            assert not values
    assert any("reward/tasks" in rec.rows[s] for s in (1, 2)) and any(
        "reward/mine" in rec.rows[s] for s in (1, 2)
    )
    # The SFT'd model answers these sums: the set is not all zeros (the function saw answers).
    assert any(c[3] == 1.0 for c in set_rewards.CALLS)


def test_memory_switches_leave_the_step_unchanged(tmp_path, sft_setup):
    """One-row passes, 16-token logit chunks and recomputed layers: the same update (on CPU,
    where bf16 is off)."""
    runs = []
    small = {
        "logprob_tokens_per_micro_batch": 64,
        "logits_chunk_tokens": 16,
        "activation_checkpointing": True,
    }
    for name, memory in (("default", {}), ("bounded", small)):
        rec = Recorder()
        prorl.run(_ctx(tmp_path / name, sft_setup, rec, steps=1, memory=memory))
        runs.append(rec.rows[1])
    default, bounded = runs
    for key in ("loss", "policy_loss", "kl", "entropy", "grad_norm", "update_token_frac", "clip_frac"):
        assert bounded[key] == pytest.approx(default[key], rel=1e-4, abs=1e-6), key


@pytest.mark.vllm
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make install-vllm)"
)
def test_a_vllm_run_samples_with_the_pushed_weights_of_each_step(tmp_path, sft_setup):
    """rollout.backend: vllm end to end: rollouts and validation by the engine, a weight push
    after each update, and the logged weight version counting the pushes."""
    tokenizer_dir = sft_setup["data"]["outputs"]["tokenizer_dir"]
    model = _sft(tokenizer_dir, sft_setup["splits"]["train"], sft_setup["root"] / "sft-vllm", heads=2)
    rec = Recorder()
    setup = {**sft_setup, "model": model}
    result = prorl.run(_ctx(tmp_path, setup, rec, steps=3, rollout={"backend": "vllm"}))
    versions = [rec.rows[s]["weight_version"] for s in (1, 2, 3)]
    updated = ["kl" in rec.rows[s] for s in (1, 2)]  # a step with no learnable group pushes nothing
    assert versions[0] == 0.0 and any(updated)
    assert [b - a for a, b in zip(versions, versions[1:], strict=False)] == [float(u) for u in updated]
    assert 0.0 <= rec.rows[3]["val/pass_at_1"] <= 1.0 and rec.rows[0]["val/pass_at_1"] > 0.0
    assert Path(result.outputs["model_dir"], "config.json").is_file()


@pytest.mark.vllm
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make install-vllm)"
)
def test_one_step_async_trains_a_version_behind_on_the_engines_logprobs_and_resumes_exactly(
    tmp_path, sft_setup, monkeypatch
):
    """rollout.async_steps: 1 — the engine process samples step t+1 while step t updates: the
    rollouts trained on at step t >= 2 are one push behind, their engine log-probs are the
    loss's θ_old, and a crash after a checkpoint resumes on the batch collected ahead."""
    tokenizer_dir = sft_setup["data"]["outputs"]["tokenizer_dir"]
    model = _sft(tokenizer_dir, sft_setup["splits"]["train"], sft_setup["root"] / "sft-async", heads=2)
    setup = {**sft_setup, "model": model}
    rollout = {"backend": "vllm", "async_steps": 1}
    behaviour: list[bool] = []
    original = prorl.update_on_groups

    def spy(policy, reference, optimizer, scheduler, train, *args):
        behaviour.append(train.batch.behaviour_logprobs is not None)
        return original(policy, reference, optimizer, scheduler, train, *args)

    monkeypatch.setattr(prorl, "update_on_groups", spy)
    children_before = {p.pid for p in multiprocessing.active_children()}
    full = Recorder()
    prorl.run(_ctx(tmp_path / "full", setup, full, steps=4, interval=2, rollout=rollout))
    assert behaviour and all(behaviour)
    updated = ["kl" in full.rows[s] for s in (1, 2, 3, 4)]
    assert all(updated), "a step without a learnable group: the lags below would differ"
    assert [full.rows[s]["weight_lag"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    assert [full.rows[s]["weight_version"] for s in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 2.0]

    crashed = Recorder(crash_at=3)
    with pytest.raises(RuntimeError, match="simulated node failure"):
        prorl.run(_ctx(tmp_path / "cut", setup, crashed, steps=4, interval=2, rollout=rollout))
    resumed = Recorder()
    prorl.run(_ctx(tmp_path / "cut", setup, resumed, steps=4, interval=2, rollout=rollout))
    for step in (3, 4):
        for key in ("reward_mean", "weight_version", "weight_lag", "loss", "kl", "ratio_mean"):
            assert resumed.rows[step][key] == pytest.approx(full.rows[step][key], rel=1e-4, abs=1e-7), key
    # Each run's engine process ended with its stage, the crashed one's too (none left behind).
    assert {p.pid for p in multiprocessing.active_children()} <= children_before


# --------------------------------------------------------------------------- data parallel

# 3 steps of 4 prompts x 4 samples (mini-batches of 2 prompts), validation at steps 0, 2, 3,
# the reference reset to the policy after step 2 (step 3's KL starts at 0).
DP_RUN = {
    "reference_reset": {"every_steps": 2},
    "n_samples": 4,
    "batch_prompts": 4,
    "mini_batch_prompts": 2,
    "temperature": 1.0,
    "kl_coef": 1e-3,
    "max_gen_batches": 2,
    "val_every": 2,
    "val_prompts": 4,
    "val_samples": 2,
    "val_temperature": 1.0,
    "log_every": 1,
    "optimizer": {"lr": 3e-4},
    "phases": [{"name": "len32", "steps": 3, "max_response_tokens": 32}],
}
DP_KEYS = (
    "loss", "policy_loss", "kl", "entropy", "grad_norm", "clip_frac", "reward_mean", "pass_rate",
    "groups_trained", "groups_kept_frac", "gen_batches", "tokens", "response_length",
    "adv_abs_mean", "update_token_frac", "eps_high",
)  # fmt: skip


def assert_same_run(two: dict, one: dict, keys: tuple[str, ...], tol: float = 1e-5) -> None:
    """Every logged metric of ``keys`` (relative ``tol``, absolute ``tol``/10: the losses are ~1e-5 themselves)
    and every final weight (absolute ``tol``) agree."""
    from slingshot.models.hf import load_causal_lm

    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert two["steps"].keys() == one["steps"].keys()
    for step, row in one["steps"].items():
        for key in keys:
            if key in row:
                assert two["steps"][step][key] == pytest.approx(row[key], rel=tol, abs=tol / 10), (step, key)
    a = load_causal_lm(two["outputs"]["model_dir"]).state_dict()
    b = load_causal_lm(one["outputs"]["model_dir"]).state_dict()
    moved = load_causal_lm(one["init_model"]).state_dict()
    assert any(not torch.equal(b[k], moved[k]) for k in b), "the reference run did not train"
    for k in b:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), k


@pytest.mark.slow
@pytest.mark.parametrize("data_parallel", ["allreduce", "fsdp"])
def test_two_ranks_match_one_on_the_same_global_batch(tmp_path, sft_setup, data_parallel):
    """2 gloo ranks, each generating and training on half of every batch, log the same
    losses, rewards, kept groups and validation and end at the same weights as 1 rank:
    with replicated models (all-reduced gradients) and with the policy and the reference
    sharded by FSDP2 (generation on the gathered policy, micro-batches in lock step)."""
    from rl_worker import spawn

    spec = {
        "kind": "prorl",
        "root": str(tmp_path),
        "overrides": {**DP_RUN, "data_parallel": data_parallel},
        "upstream": {"data": sft_setup["data"]},
        "init_model": str(sft_setup["model"]),
        "stage": "prorl-len32",
        "phase": "len32",
    }
    one = spawn({**spec, "root": str(tmp_path / "one")}, tmp_path / "one", 1)
    two = spawn({**spec, "root": str(tmp_path / "two")}, tmp_path / "two", 2)
    one["init_model"] = spec["init_model"]
    assert sorted(int(s) for s in one["steps"]) == [0, 1, 2, 3]
    assert sum(one["steps"][s]["groups_trained"] for s in ("1", "2", "3")) > 0
    assert one["steps"]["3"]["kl_start"] == 0.0 and one["steps"]["2"]["ref_reset"] == 1.0
    assert_same_run(two, one, (*DP_KEYS, "kl_start", "resets", "val/pass_at_1", "val/response_length"))


@pytest.mark.slow  # a 2-rank and a 1-rank run of 3 steps
@pytest.mark.parametrize("saved_on, resumed_on", [(2, 1), (1, 2)])
def test_checkpoint_resumes_at_another_world_size(tmp_path, sft_setup, saved_on, resumed_on):
    """The step-2 checkpoint of a run on ``saved_on`` gloo ranks (every rank writes its files;
    FSDP2 shards on 2 ranks) resumes on ``resumed_on``: step 3 draws the same prompts and samples (seeded per prompt,
    not per rank), keeps the same groups and logs the same losses against the saved reference."""
    import shutil

    from rl_worker import spawn

    spec = {
        "kind": "prorl",
        # FSDP2 on the 2-rank side: its sharded checkpoint resumes unsharded, and vice versa.
        "overrides": {**DP_RUN, "val_every": 100, "data_parallel": "fsdp"},
        "upstream": {"data": sft_setup["data"]},
        "init_model": str(sft_setup["model"]),
        "stage": "prorl-len32",
        "phase": "len32",
        "interval": 2,
    }
    saved = spawn({**spec, "root": str(tmp_path / "saved")}, tmp_path / "saved", saved_on)
    checkpoints = tmp_path / "saved" / "work" / "main" / "prorl-len32" / "checkpoints"
    files = {p.name for p in (checkpoints / "step-00000002").rglob("*")}
    assert {f"__{r}_0.distcp" for r in range(saved_on)} <= files
    assert {f"rng-rank{r:05d}.pt" for r in range(saved_on)} <= files
    shutil.copytree(tmp_path / "saved", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "work" / "main" / "prorl-len32" / "checkpoints" / "step-00000003")

    resumed = spawn({**spec, "root": str(tmp_path / "resumed")}, tmp_path / "resumed-run", resumed_on)
    assert resumed["world_size"] == resumed_on and sorted(resumed["steps"]) == ["3"]
    want, got = saved["steps"]["3"], resumed["steps"]["3"]
    assert sum(saved["steps"][s]["groups_trained"] for s in ("1", "2", "3")) > 0  # it trained
    for key in DP_KEYS:
        if key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_a_batch_that_does_not_divide_over_the_ranks_or_async_rollouts_on_several_are_refused():
    from slingshot.config import ProRLConfig

    prorl.check_world_size(ProRLConfig(batch_prompts=4, mini_batch_prompts=2), 2)
    with pytest.raises(ValueError, match=r"prorl\.batch_prompts: 6 prompts do not divide over 4 ranks"):
        prorl.check_world_size(ProRLConfig(batch_prompts=6, mini_batch_prompts=2), 4)
    with pytest.raises(ValueError, match=r"prorl\.mini_batch_prompts"):
        prorl.check_world_size(ProRLConfig(batch_prompts=4, mini_batch_prompts=1), 2)
    with pytest.raises(ValueError, match=r"prorl\.over_provision: ceil"):
        prorl.check_world_size(ProRLConfig(batch_prompts=4, mini_batch_prompts=2, over_provision=1.25), 2)
    async_cfg = ProRLConfig(
        batch_prompts=4, mini_batch_prompts=2, rollout={"backend": "vllm", "async_steps": 1}
    )
    with pytest.raises(
        ValueError, match=r"prorl\.rollout\.async_steps: .* one process only; this job has 2 ranks"
    ):
        prorl.check_world_size(async_cfg, 2)
    prorl.check_world_size(async_cfg, 1)
