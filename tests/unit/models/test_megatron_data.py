"""Pretraining data and the phase plan: corpus streams that continue across phases, data-parallel
slices of a global batch, and each phase's steps in the stage's global step count."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("megatron.core")

from stages import TINY_GPT  # noqa: E402

from slingshot.config import PretrainConfig  # noqa: E402
from slingshot.models.megatron_data import (  # noqa: E402
    build_phase_data,
    corpus_budgets,
    phase_plan,
    plan_phases,
)

# 2 layers, seq 64, 8 sequences per step, the default 60/40 phases: phase1 = 6 steps, phase2 = 4.
PRETRAIN = {"model": TINY_GPT, "total_tokens": 5120, "micro_batch_size": 4, "global_batch_size": 8}


def test_corpus_streams_continue_across_phases(small_data: dict[str, Any]) -> None:
    """Phase 2 continues each corpus stream where phase 1 stopped; DP ranks split a batch."""
    from slingshot.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(small_data["outputs"]["tokenizer_dir"])
    prefixes = {n: small_data["outputs"][f"indexed_{n}"] for n in ("general", "reasoning")}
    phases = [({"general": 1.0}, 48), ({"general": 0.8, "reasoning": 0.2}, 32)]
    budgets = corpus_budgets(phases)
    d1, d2 = (
        build_phase_data(
            tokenizer,
            prefixes,
            blend,
            sequence_length=64,
            num_samples=n,
            global_batch_size=8,
            seed=3,
            budgets=budgets,
        )
        for blend, n in phases
    )
    consumed = {"general": 0, "reasoning": 0}
    for step in range(6):
        for name, n in d1.corpus_counts(step).items():
            consumed[name] += n
    assert consumed == {"general": 48, "reasoning": 0}
    where = [d1.locate(i, {}) for i in range(48)] + [d2.locate(i, consumed) for i in range(32)]
    for name in ("general", "reasoning"):
        positions = [p for c, p in where if c == name]
        assert positions == list(range(len(positions)))  # one stream: nothing repeated or skipped
    assert 4 <= sum(c == "reasoning" for c, _ in where) <= 8  # 20% of phase 2's 32 samples
    # Both phases read the same stream (same shuffle), and the batches hold those samples.
    assert torch.equal(
        torch.as_tensor(d1.streams["general"][50]["tokens"]),
        torch.as_tensor(d2.streams["general"][50]["tokens"]),
    )
    full = d2.micro_batches(1, 0, 1, 8, consumed)[0]
    for j in range(8):
        corpus, position = d2.locate(8 + j, consumed)
        assert torch.equal(full["tokens"][j], torch.as_tensor(d2.streams[corpus][position]["tokens"]).long())
    assert torch.equal(full["labels"][:, :-1], full["tokens"][:, 1:])
    # Data parallel: rank slices of 4 concatenate to the global batch of 8.
    halves = [d2.micro_batches(1, r, 2, 4, consumed)[0]["tokens"] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), full["tokens"])


def test_phase_plan_splits_tokens_and_spans_the_schedule() -> None:
    cfg = PretrainConfig.model_validate(PRETRAIN)
    p1, p2 = plan_phases(cfg)
    assert (p1.steps, p1.offset, p2.steps, p2.offset) == (6, 0, 4, 6)
    assert p1.total_steps == p2.total_steps == 10 and p1.tokens_per_step == 512
    assert phase_plan(cfg, "phase2") == p2
    with pytest.raises(KeyError, match="nope"):
        phase_plan(cfg, "nope")
