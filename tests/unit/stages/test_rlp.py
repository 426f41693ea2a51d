"""RLP stage: batch construction and the thought-only gradient, the position stream, the EMA
teacher, exact resume after a kill, and the information-gain curve on a warm-started model."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from stages import make_ctx, pipeline_config, tiny_model_dir

from slingshot.checkpoint import StageInterrupted
from slingshot.config import RLPConfig
from slingshot.models.hf import load_model_and_tokenizer, save_model_dir
from slingshot.rollout import Rollout
from slingshot.stages import rlp
from slingshot.tracking import Tracker
from slingshot.train.optim import build_scheduler
from slingshot.train.policy_update import (
    UpdateSettings,
    ema_teacher_hook,
    next_token_update,
    sampling_passes,
    update_on_thoughts,
)
from slingshot.train.rlp_batch import (
    Position,
    PositionStream,
    build_baseline_batch,
    build_thought_batch,
)
from slingshot.train.rlp_scoring import score_thoughts
from slingshot.train.state import read_checkpoint

OPEN, CLOSE, PAD = 5, 6, 0

# Small and fast: 3 steps of B=2 positions x G=2 thoughts of up to 6 tokens.
TINY_RLP = {
    "steps": 3,
    "positions_per_step": 2,
    "group_size": 2,
    "thought_tokens": 6,
    "context_tokens": 24,
    "min_context_tokens": 4,
    "micro_batch_size": 4,
    "log_every": 1,
    "temperature": 1.0,
    "ema_tau": 0.9,
    "optimizer": {"lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0},
    # An untrained model rarely closes a thought within 6 tokens: the default (exclude) would
    # leave these mechanics tests (EMA mix, resume) with no update at all.
    "unclosed_thought": "close",
}


class RecordingTracker(Tracker):
    """A disabled tracker that keeps the metrics and can ask the stage to stop at a step."""

    def __init__(self, stop_at: int | None = None):
        super().__init__(None, None)
        self.rows: dict[int, dict[str, float]] = {}
        self.stop_at = stop_at
        self.ctx = None

    def log_metrics(self, metrics, step):
        self.rows[step] = dict(metrics)
        if self.stop_at is not None and step == self.stop_at:
            self.ctx.triggers.request_stop("test-kill")


def _ctx(tmp: Path, small_data, model_dir: Path, rlp_cfg: dict, tracker: Tracker | None = None):
    cfg = pipeline_config(tmp, {"stages": {"rlp": rlp_cfg}})
    ctx = make_ctx(tmp, "rlp", cfg, {"data": small_data}, init_model=str(model_dir), tracker=tracker)
    if isinstance(tracker, RecordingTracker):
        tracker.ctx = ctx
    return ctx


@pytest.fixture(scope="module")
def tiny_model(small_data, tmp_path_factory) -> Path:
    return tiny_model_dir(
        tmp_path_factory.mktemp("rlp-model") / "m", Path(small_data["outputs"]["tokenizer_dir"])
    )


# --------------------------------------------------------------------------- batch construction


def _hand_batch():
    positions = [
        Position(doc_index=0, t=3, context=(1, 10, 11, 12), target=(13,)),
        Position(doc_index=1, t=2, context=(1, 20, 21), target=(22,)),
    ]
    rollouts = [
        [
            Rollout([1, 10, 11, 12, OPEN], [30, 31, CLOSE], finished=True),  # closed by a sampled </think>
            Rollout([1, 10, 11, 12, OPEN], [32, 33, 34], finished=False),  # truncated: </think> appended
        ],
        [
            Rollout([1, 20, 21, OPEN], [CLOSE], finished=True),  # empty thought: only the stop action
            Rollout([1, 20, 21, OPEN], [35], finished=False),
        ],
    ]
    return positions, rollouts


def test_thought_batch_layout_mask_and_target_by_hand():
    positions, rollouts = _hand_batch()
    batch = build_thought_batch(positions, rollouts, OPEN, CLOSE, PAD)
    expected_rows = [
        [1, 10, 11, 12, OPEN, 30, 31, CLOSE, 13],
        [1, 10, 11, 12, OPEN, 32, 33, 34, CLOSE, 13],
        [1, 20, 21, OPEN, CLOSE, 22, PAD, PAD, PAD, PAD],
        [1, 20, 21, OPEN, 35, CLOSE, 22, PAD, PAD, PAD],
    ]
    assert batch.input_ids.tolist() == [r + [PAD] * (10 - len(r)) for r in expected_rows]
    assert batch.attention_mask.sum(1).tolist() == [9, 10, 6, 7]
    # logp column j scores token j+1: the mask marks exactly the SAMPLED thought tokens.
    masked_tokens = [
        [batch.input_ids[i, j + 1].item() for j in range(9) if batch.thought_mask[i, j]] for i in range(4)
    ]
    assert masked_tokens == [[30, 31, CLOSE], [32, 33, 34], [CLOSE], [35]]  # appended </think> excluded
    targets = [batch.input_ids[i, batch.target_index[i, 0] + 1].item() for i in range(4)]
    assert targets == [13, 13, 22, 22]
    assert batch.thought_lengths.tolist() == [3, 3, 1, 1]
    assert batch.closed.tolist() == [True, False, True, False]
    baseline = build_baseline_batch(positions, PAD)
    assert baseline.input_ids.tolist() == [[1, 10, 11, 12, 13], [1, 20, 21, 22, PAD]]
    assert [baseline.input_ids[i, baseline.target_index[i, 0] + 1].item() for i in range(2)] == [13, 22]
    with pytest.raises(ValueError, match="prompt"):
        build_thought_batch(positions, [rollouts[1], rollouts[0]], OPEN, CLOSE, PAD)


class _LogitTable(torch.nn.Module):
    """A 'model' whose logits are one free parameter per (sequence, position): its gradient
    shows exactly which positions the loss reads. Rows of a micro-batch are matched to the
    full batch by their tokens, so micro-batching is exercised too."""

    def __init__(self, full_ids: torch.Tensor, vocab: int):
        super().__init__()
        self.full_ids = full_ids
        self.table = torch.nn.Parameter(torch.randn(*full_ids.shape, vocab))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        width = input_ids.shape[1]
        rows = [int((self.full_ids[:, :width] == row).all(1).nonzero()[0]) for row in input_ids]
        return SimpleNamespace(logits=self.table[rows, :width])


def test_only_thought_tokens_receive_gradient_through_the_real_update():
    torch.manual_seed(0)
    positions, rollouts = _hand_batch()
    batch = build_thought_batch(positions, rollouts, OPEN, CLOSE, PAD)
    policy = _LogitTable(batch.input_ids, 40)
    ema = _LogitTable(batch.input_ids, 40)
    cfg = RLPConfig(
        positions_per_step=2,
        group_size=2,
        micro_batch_size=3,  # two micro-batches of different widths
        optimizer={"lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "grad_clip": 0.0},
    )
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)
    scheduler = build_scheduler(optimizer, cfg.optimizer, 1)
    # θ_old at the sampling temperature, as the stage scores it: on-policy the ratio is 1.
    scores = score_thoughts(policy, batch, cfg.micro_batch_size, torch.device("cpu"), sampling_passes(cfg))
    advantages = torch.tensor([1.0, -2.0, 0.5, -0.5])
    metrics = update_on_thoughts(
        policy,
        optimizer,
        scheduler,
        batch,
        scores.old_logp,
        advantages,
        UpdateSettings.from_config(cfg),
        torch.device("cpu"),
        ema_teacher_hook(ema, policy, cfg.ema_tau),
    )
    touched = policy.table.grad.abs().sum(-1) > 0  # [N, L]: positions whose logits got gradient
    assert torch.equal(touched[:, :-1], batch.thought_mask)
    assert not touched[:, -1].any()
    assert metrics["ratio_mean"] == pytest.approx(1.0) and metrics["clip_frac"] == 0.0
    # On-policy with one update: the loss is -mean_i A_i (seq-mean-token-mean at ratio 1).
    assert metrics["loss"] == pytest.approx(-float(advantages.mean()), abs=1e-6)


# --------------------------------------------------------------------------- the position stream


def _stream(docs: list[list[int]], **kw) -> PositionStream:
    defaults = dict(seed=7, context_tokens=5, target_tokens=2, min_context=3, bos_id=1, per_document=2)
    defaults.update(kw)
    return PositionStream(
        lambda: iter([str(i) for i in range(len(docs))]),
        lambda texts: [docs[int(t)] for t in texts],
        **defaults,
    )


def test_uniform_positions_respect_context_target_and_bos():
    docs = [list(range(100, 100 + n)) for n in (4, 12, 9, 30)]
    stream = _stream(docs)
    for p in stream.take(12):
        doc = docs[p.doc_index]
        assert 3 <= p.t <= len(doc) - 2
        assert p.target == tuple(doc[p.t : p.t + 2])
        start = max(0, p.t - 5)
        assert p.context == ((1,) if start == 0 else ()) + tuple(doc[start : p.t])
    assert stream.epoch >= 1  # wrapped around the 4 documents
    with pytest.raises(ValueError, match="no usable position"):
        _stream([[1, 2], [3]]).take(1)


def test_stream_resumes_exactly_from_its_state():
    docs = [list(range(n, n + 10 + n % 7)) for n in range(9)]
    reference = _stream(docs)
    expected = [reference.take(3) for _ in range(6)]
    stream = _stream(docs)
    got = [stream.take(3), stream.take(3)]
    state = json.loads(json.dumps(stream.state_dict()))  # the checkpoint round trip
    resumed = _stream(docs)
    resumed.load_state_dict(state)
    got += [resumed.take(3) for _ in range(4)]
    assert got == expected


def test_entropy_selection_keeps_only_high_entropy_positions():
    docs = [list(range(200, 240)) for _ in range(3)]
    # Fake proxy: entropy of predicting token v is high only for even token ids.
    calls = []

    def entropy_fn(windows):
        calls.append(len(windows))
        return [torch.tensor([3.0 if tok % 2 == 0 else 0.1 for tok in w[1:]]) for w in windows]

    stream = _stream(docs, selection="entropy", entropy_fn=entropy_fn, entropy_threshold=1.0, proxy_batch=2)
    picked = stream.take(5)
    assert all(docs[p.doc_index][p.t] % 2 == 0 for p in picked)
    assert calls[0] == 2  # documents are scored in batches
    assert 0.4 < stream.selected / stream.candidates < 0.6


# --------------------------------------------------------------------------- the stage


def _state(ctx) -> dict:
    latest = ctx.checkpoints.latest()
    return read_checkpoint(latest.path)


def test_ema_teacher_is_tau_mix_after_one_step(tmp_path, small_data, tiny_model):
    ctx = _ctx(tmp_path, small_data, tiny_model, {**TINY_RLP, "steps": 1})
    result = rlp.run(ctx)
    state = _state(ctx)
    initial, _ = load_model_and_tokenizer(tiny_model)
    tau = TINY_RLP["ema_tau"]
    names = [n for n, _ in initial.named_parameters()]
    other_tau_fits = True
    for name, phi0 in zip(names, initial.parameters(), strict=True):
        theta1, phi1 = state["model"][name], state["ema"][name]
        # float32 rounding near 1.0 is ~1e-7; one Adam step moves weights by ~lr = 1e-3.
        assert torch.allclose(phi1, tau * phi0 + (1 - tau) * theta1, rtol=0, atol=1e-6), name
        other_tau_fits &= torch.allclose(phi1, 0.91 * phi0 + 0.09 * theta1, rtol=0, atol=1e-6)
    assert not other_tau_fits  # the check tells τ = 0.9 from 0.91: the policy really moved
    assert Path(result.outputs["model_dir"], "config.json").is_file()
    assert result.tokens > 0 and "reward_mean" in result.metrics


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, small_data, tiny_model):
    cfg = {**TINY_RLP, "steps": 4, "checkpoint": {"interval_steps": 100}}
    ref_ctx = _ctx(tmp_path / "ref", small_data, tiny_model, cfg, RecordingTracker())
    rlp.run(ref_ctx)
    reference = _state(ref_ctx)

    killed = RecordingTracker(stop_at=2)
    with pytest.raises(StageInterrupted):
        rlp.run(_ctx(tmp_path / "cut", small_data, tiny_model, cfg, killed))
    resumed_tracker = RecordingTracker()
    ctx = _ctx(tmp_path / "cut", small_data, tiny_model, cfg, resumed_tracker)
    rlp.run(ctx)
    assert sorted(resumed_tracker.rows) == [3, 4]  # continued, did not restart
    state = _state(ctx)
    for part in ("model", "ema"):
        for name, value in reference[part].items():
            assert torch.equal(state[part][name], value), f"{part}.{name}"
    assert state["stream"] == reference["stream"]
    for step in (3, 4):  # the same thoughts and scores after the resume
        for key in ("reward_mean", "s_pred", "s_ema", "thought_len"):
            assert resumed_tracker.rows[step][key] == ref_ctx.tracker.rows[step][key]
    ref_opt, opt = reference["optimizer"], state["optimizer"]
    moments = [k for k in ref_opt if k.endswith(".exp_avg")]
    assert moments and all(torch.equal(ref_opt[k], opt[k]) for k in moments)


# --------------------------------------------------------------------------- the next-token control


def test_next_token_update_is_the_mean_token_nll_of_the_positions_sequences(small_data, tiny_model):
    """One mini-batch: the loss is the input model's mean NLL over every next token of each
    position's ``context target`` (HF's own loss on the same rows), and the step moves the weights."""
    model, tokenizer = load_model_and_tokenizer(tiny_model)
    model.eval()
    positions = [
        Position(doc_index=0, t=5, context=(1, 40, 41, 42, 43), target=(44,)),
        Position(doc_index=1, t=2, context=(1, 50, 51), target=(52,)),
    ]
    batch = build_baseline_batch(positions, pad_id=0)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RLPConfig(**{**TINY_RLP, "objective": "next_token"})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, cfg.optimizer, 1)
    out = next_token_update(
        model, optimizer, scheduler, positions, 0, UpdateSettings.from_config(cfg), torch.device("cpu")
    )
    assert out["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert out["tokens"] == 6 + 4  # context and target of both positions
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_next_token_objective_trains_on_rlps_positions_without_thoughts_and_resumes(
    tmp_path, small_data, tiny_model
):
    cfg = {**TINY_RLP, "objective": "next_token", "steps": 4, "checkpoint": {"interval_steps": 100}}
    ref_ctx = _ctx(tmp_path / "ref", small_data, tiny_model, cfg, RecordingTracker())
    result = rlp.run(ref_ctx)
    rows = ref_ctx.tracker.rows
    assert sorted(rows) == [1, 2, 3, 4] and all(rows[s]["loss"] > 0 for s in rows)
    assert "reward_mean" not in rows[1] and "thought_len" not in rows[1]  # no thought was sampled
    assert Path(result.outputs["model_dir"], "config.json").is_file()
    reference = _state(ref_ctx)
    assert "ema" not in reference  # no teacher
    # The same positions as RLP draws with the same config: the stream ends where RLP's does.
    rlp_ctx = _ctx(tmp_path / "rlp", small_data, tiny_model, {**cfg, "objective": "rlp"}, RecordingTracker())
    rlp.run(rlp_ctx)
    assert _state(rlp_ctx)["stream"] == reference["stream"]

    killed = RecordingTracker(stop_at=2)
    with pytest.raises(StageInterrupted):
        rlp.run(_ctx(tmp_path / "cut", small_data, tiny_model, cfg, killed))
    resumed = RecordingTracker()
    ctx = _ctx(tmp_path / "cut", small_data, tiny_model, cfg, resumed)
    rlp.run(ctx)
    assert sorted(resumed.rows) == [3, 4]
    assert [resumed.rows[s]["loss"] for s in (3, 4)] == [rows[s]["loss"] for s in (3, 4)]
    for name, value in reference["model"].items():
        assert torch.equal(_state(ctx)["model"][name], value), name


# --------------------------------------------------------------------------- information gain rises


def _warm_started_model(small_data, out: Path, steps: int = 200) -> Path:
    """A tiny model trained briefly on the general corpus, with SFT-like thought spans mixed in.

    A model that never saw ``</think>`` cannot read anything after a thought (its S_pred
    stays ~5 nats below S_ema whatever it writes), so the text carries short thoughts
    that restate the last 1-4 tokens, ``... x <think> x </think> next ...``, every ~10
    tokens: the format, not the skill of writing useful thoughts, which RLP must learn.
    """
    from slingshot.data.corpora import CorpusSpec, read_corpus
    from slingshot.data.packing import tokenize_documents

    base = tiny_model_dir(out / "init", Path(small_data["outputs"]["tokenizer_dir"]))
    model, tok = load_model_and_tokenizer(base)
    vocab = tok.get_vocab()
    think_open, think_close = vocab["<think>"], vocab["</think>"]
    rnd = random.Random(0)
    texts = [
        r["text"] for r in read_corpus(CorpusSpec(name="g", path=small_data["outputs"]["corpus_general"]))
    ]
    ids: list[int] = []
    for doc in tokenize_documents(tok, texts):
        if len(doc) > 12:
            for p in sorted(rnd.sample(range(4, len(doc) - 4), len(doc) // 10), reverse=True):
                restated = doc[max(0, p - rnd.randint(1, 4)) : p]
                doc = doc[:p] + [think_open, *restated, think_close] + doc[p:]
        ids += [tok.eos_token_id, *doc]
    seqs = torch.tensor(ids[: len(ids) // 64 * 64]).view(-1, 64)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = seqs[torch.randint(0, len(seqs), (16,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_model_dir(model, tok, out / "warm")


@pytest.mark.slow
def test_information_gain_rises_against_a_frozen_control(tmp_path, small_data):
    """RLP on the warm-started model vs the same run with lr ~ 0 (same positions, same sampling
    seeds): the per-step difference in mean information gain starts at ~0 and grows.

    Positions differ a lot in difficulty, so the raw per-step reward is noisy; the frozen
    control run sees exactly the same positions and seeds, and the difference isolates
    what the updates changed.
    """
    model_dir = _warm_started_model(small_data, tmp_path)
    cfg = {
        "steps": 30,
        "positions_per_step": 8,
        "group_size": 8,
        "thought_tokens": 4,
        "context_tokens": 64,
        "micro_batch_size": 64,
        "log_every": 1,
        "temperature": 1.0,
        "ema_tau": 0.999,
        "optimizer": {"lr": 3e-4, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0},
    }
    curves = {}
    for name, lr in (("trained", 3e-4), ("control", 1e-12)):
        tracker = RecordingTracker()
        run_cfg = {**cfg, "optimizer": {**cfg["optimizer"], "lr": lr}}
        rlp.run(_ctx(tmp_path / name, small_data, model_dir, run_cfg, tracker))
        curves[name] = [tracker.rows[s]["reward_mean"] for s in range(1, 31)]
    diff = [t - c for t, c in zip(curves["trained"], curves["control"], strict=True)]
    first, last = sum(diff[:10]) / 10, sum(diff[-10:]) / 10
    print("reward_mean trained:", " ".join(f"{x:.2f}" for x in curves["trained"]))
    print("reward_mean control:", " ".join(f"{x:.2f}" for x in curves["control"]))
    print("trained - control:  ", " ".join(f"{x:+.2f}" for x in diff))
    print(f"mean difference steps 1-10: {first:+.3f}, steps 21-30: {last:+.3f}")
    assert abs(first) < 0.25  # the runs start out the same
    # Measured with chat-format reasoning text in the warm start: +0.206 -> +0.498; with thoughts
    # stopped at end of text and unclosed ones excluded (the defaults since issue 24): +0.083 -> +0.414.
    assert last > 0.3 and last > first + 0.25


def test_memory_switches_leave_the_step_unchanged(tmp_path, small_data, tiny_model):
    """One-row passes, 8-token logit chunks, recomputed layers (in eval mode) and a CPU-kept
    EMA teacher: the same step, the same teacher."""
    states, metrics = [], []
    bounded = {
        "logprob_tokens_per_micro_batch": 1,
        "logits_chunk_tokens": 8,
        "activation_checkpointing": True,
        "frozen_copy": "cpu",
    }
    for name, memory in (("default", {}), ("bounded", bounded)):
        ctx = _ctx(tmp_path / name, small_data, tiny_model, {**TINY_RLP, "steps": 1, "memory": memory})
        metrics.append(rlp.run(ctx).metrics)
        states.append(_state(ctx))
    for key, value in metrics[0].items():
        assert metrics[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for part in ("model", "ema"):
        for name, tensor in states[0][part].items():
            assert torch.allclose(states[1][part][name], tensor, atol=1e-6), (part, name)


@pytest.mark.vllm
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make install-vllm)"
)
def test_a_vllm_run_logs_one_weight_push_per_step(tmp_path, small_data):
    """rollout.backend: vllm: the thoughts come from the engine, which gets the weights after every step."""
    model = tiny_model_dir(tmp_path / "m", Path(small_data["outputs"]["tokenizer_dir"]), heads=2, kv_heads=1)
    tracker = RecordingTracker()
    rlp.run(_ctx(tmp_path, small_data, model, {**TINY_RLP, "rollout": {"backend": "vllm"}}, tracker))
    assert [tracker.rows[s]["weight_version"] for s in (1, 2, 3)] == [0.0, 1.0, 2.0]
    assert all(0 < tracker.rows[s]["thought_len"] <= TINY_RLP["thought_tokens"] for s in (1, 2, 3))


# --------------------------------------------------------------------------- resume at another world size


@pytest.mark.slow  # ~40 s on 2 shared cores: a 2-rank run and a 1-rank run
@pytest.mark.parametrize("saved_on, resumed_on", [(2, 1), (1, 2)])
def test_checkpoint_resumes_at_another_world_size(tmp_path, small_data, tiny_model, saved_on, resumed_on):
    """The step-2 checkpoint of a run on ``saved_on`` gloo ranks (each rank writes its files)
    resumes on ``resumed_on``: step 3 scores the same positions with the same EMA teacher,
    samples the same thoughts (seeded per position, not per rank) and logs the same losses."""
    import shutil
    import socket
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sft_worker import finish_ranks, run_stage, start_ranks

    def run(name: str, world: int) -> dict:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        spec = {
            "kind": "rlp",
            "root": str(tmp_path / name),
            # FSDP2 on the 2-rank side: its sharded checkpoint resumes unsharded, and vice versa.
            "overrides": {**TINY_RLP, "steps": 3, "data_parallel": "fsdp"},
            "upstream": {"data": small_data},
            "init_model": str(tiny_model),
            "interval": 2,
            "world_size": world,
            "port": port,
            "out": str(tmp_path / f"{name}.json"),
        }
        if world == 1:
            return run_stage(spec)
        return finish_ranks(start_ranks(spec, tmp_path / f"{name}.spec.json"), spec)

    reference = run("saved", saved_on)  # steps 1-3, checkpoints at 2 and 3
    checkpoints = tmp_path / "saved" / "work" / "main" / "rlp" / "checkpoints"
    files = {p.name for p in (checkpoints / "step-00000002").rglob("*")}
    assert {f"__{r}_0.distcp" for r in range(saved_on)} <= files
    assert {f"rng-rank{r:05d}.pt" for r in range(saved_on)} <= files
    shutil.copytree(tmp_path / "saved", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "work" / "main" / "rlp" / "checkpoints" / "step-00000003")

    resumed = run("resumed", resumed_on)
    assert resumed["world_size"] == resumed_on and sorted(resumed["steps"]) == ["3"]
    want, got = reference["steps"]["3"], resumed["steps"]["3"]
    assert got["weight_version"] == want["weight_version"] == 2.0  # sampled with step 2's weights
    assert got["s_ema"] == pytest.approx(want["s_ema"], rel=1e-5)  # same positions, same teacher
    for key in ("loss", "reward_mean", "reward_std", "s_pred", "thought_len", "grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


# --------------------------------------------------------------------------- data parallel


@pytest.mark.parametrize("data_parallel", ["allreduce", "fsdp"])
def test_two_ranks_match_one_on_the_same_global_batch(tmp_path, small_data, tiny_model, data_parallel):
    """2 gloo ranks, each taking half of every mini-batch's positions, log the same losses,
    rewards and scores and end at the same weights as 1 rank (B=4 in 2 mini-batches): with
    replicated models, and with the policy and the EMA teacher sharded by FSDP2."""
    from rl_worker import spawn
    from test_prorl import assert_same_run

    cfg = {**TINY_RLP, "positions_per_step": 4, "mini_batches": 2, "data_parallel": data_parallel}
    spec = {"kind": "rlp", "upstream": {"data": small_data}, "init_model": str(tiny_model), "overrides": cfg}
    one = spawn({**spec, "root": str(tmp_path / "one")}, tmp_path / "one", 1)
    two = spawn({**spec, "root": str(tmp_path / "two")}, tmp_path / "two", 2)
    one["init_model"] = str(tiny_model)
    assert sorted(int(s) for s in one["steps"]) == [1, 2, 3]
    keys = ("loss", "grad_norm", "clip_frac", "reward_mean", "reward_std", "s_pred", "s_ema")
    keys += ("thought_len", "policy_entropy", "ema_distance", "tokens", "gain_positive_frac")
    assert_same_run(two, one, keys)


def test_a_batch_that_does_not_divide_over_the_ranks_is_refused(tmp_path, small_data, tiny_model):
    from slingshot.dist import DistEnv

    cfg = pipeline_config(
        tmp_path, {"stages": {"rlp": {**TINY_RLP, "positions_per_step": 4, "mini_batches": 2}}}
    )
    ctx = make_ctx(tmp_path, "rlp", cfg, {"data": small_data}, init_model=str(tiny_model), dist=DistEnv(0, 4))
    with pytest.raises(ValueError, match=r"rlp\.positions_per_step: 4 positions in 2 mini_batches"):
        rlp.run(ctx)
