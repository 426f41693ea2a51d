"""Pretraining data: Megatron-Core's GPTDataset per corpus and BlendedDataset per phase,
read by deterministic sample positions (no DataLoader state).

Every corpus is ONE stream for the whole stage: a GPTDataset over the data stage's
indexed corpus, sized for what all phases together will draw from it (so its shuffle
is the same in every phase). A phase's BlendedDataset (its blend weights) decides which
corpus each of its samples comes from (``dataset_index``) and the how-many-th draw from
that corpus it is in this phase (``dataset_sample_index``); the sample itself is
``stream[corpus][start[corpus] + draw]``, where ``start`` is what earlier phases already
consumed of the corpus. So phase 2 continues each corpus where phase 1 stopped: across
phases and resumes, no sample is repeated or skipped.

Each phase trains for its share of the stage's tokens (:func:`plan_phases`); inside a
phase, step ``s`` (0-based) consumes global samples ``[s*G, (s+1)*G)``; data-parallel
rank ``r`` of ``D`` takes ``[s*G + r*G/D, s*G + (r+1)*G/D)``, cut into micro-batches. A
checkpoint therefore needs only the step and the per-corpus counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from slingshot.data.megatron_indexed import (
    MegatronTokenizerAdapter,
    build_gpt_datasets,
    gpt_dataset_config,
)

if TYPE_CHECKING:
    from slingshot.config import PretrainConfig

# Megatron builds each mid-level dataset of a blend with this surplus over weight x size.
_SURPLUS = 0.005


@dataclass(frozen=True)
class PhasePlan:
    """Where a phase sits in the stage's global step count (the lr schedule's x-axis)."""

    index: int
    name: str
    steps: int  # optimizer steps of this phase
    offset: int  # global steps taken by the phases before it
    total_steps: int  # global steps of the whole stage (all phases)
    tokens_per_step: int


def plan_phases(cfg: PretrainConfig) -> list[PhasePlan]:
    """Steps per phase from its token budget; each phase takes at least one step."""
    tokens_per_step = cfg.global_batch_size * cfg.model.seq_length
    steps = [max(1, round(p.token_fraction * cfg.total_tokens / tokens_per_step)) for p in cfg.phases]
    plans, offset = [], 0
    for i, (phase, n) in enumerate(zip(cfg.phases, steps, strict=True)):
        plans.append(PhasePlan(i, phase.name, n, offset, sum(steps), tokens_per_step))
        offset += n
    return plans


def phase_plan(cfg: PretrainConfig, phase: str | None) -> PhasePlan:
    """The plan of the phase named ``phase`` (None: the config's only phase)."""
    plans = plan_phases(cfg)
    if phase is None:
        if len(plans) != 1:
            raise ValueError("this pretrain node has no phase but the config has several")
        return plans[0]
    for plan in plans:
        if plan.name == phase:
            return plan
    raise KeyError(f"phase '{phase}' is not in the pretrain config (have {[p.name for p in plans]})")


def corpus_budgets(phases: Sequence[tuple[Mapping[str, float], int]]) -> dict[str, int]:
    """Samples to build per corpus stream: at least what every phase's blend can draw from it.

    ``phases``: (blend, samples of the phase). Megatron's blending never draws more than
    ceil(weight x size) from a dataset, so the sum over phases (with margin) suffices.
    """
    budget: dict[str, int] = {}
    for blend, samples in phases:
        total = float(sum(blend.values()))
        for name, weight in blend.items():
            need = math.ceil(math.ceil(samples * weight / total) * (1 + _SURPLUS)) + 1
            budget[name] = budget.get(name, 0) + need
    return budget


@dataclass
class PhaseData:
    """A phase's sample order (BlendedDataset) over the stage-long corpus streams."""

    blended: Any  # megatron.core.datasets.blended_dataset.BlendedDataset: the order only
    streams: dict[str, Any]  # corpus -> GPTDataset for the whole stage
    corpora: list[str]  # blend order: dataset_id i -> corpora[i]
    global_batch_size: int

    @classmethod
    def from_config(
        cls, cfg: PretrainConfig, plan: PhasePlan, tokenizer: Any, prefixes: Mapping[str, str], seed: int
    ) -> PhaseData:
        """Phase ``plan``'s data: its blend over corpus streams sized for every phase of ``cfg``."""
        plans = plan_phases(cfg)
        budgets = corpus_budgets(
            [(p.blend, pl.steps * cfg.global_batch_size) for p, pl in zip(cfg.phases, plans, strict=True)]
        )
        return build_phase_data(
            tokenizer,
            prefixes,
            dict(cfg.phases[plan.index].blend),
            sequence_length=cfg.model.seq_length,
            num_samples=plan.steps * cfg.global_batch_size,
            global_batch_size=cfg.global_batch_size,
            seed=seed,
            budgets=budgets,
        )

    def __len__(self) -> int:
        return len(self.blended)

    def step_sample_range(self, step_index: int) -> tuple[int, int]:
        """Global sample indices [start, end) of 0-based phase step ``step_index``."""
        start = step_index * self.global_batch_size
        return start, start + self.global_batch_size

    def corpus_counts(self, step_index: int) -> dict[str, int]:
        """Samples each corpus contributes to the global batch of ``step_index``."""
        start, end = self.step_sample_range(step_index)
        ids = np.asarray(self.blended.dataset_index[start:end])
        counts = np.bincount(ids, minlength=len(self.corpora))
        return {name: int(counts[i]) for i, name in enumerate(self.corpora)}

    def locate(self, index: int, start: Mapping[str, int]) -> tuple[str, int]:
        """(corpus, position in its stream) of phase sample ``index``."""
        corpus = self.corpora[int(self.blended.dataset_index[index])]
        position = int(start.get(corpus, 0)) + int(self.blended.dataset_sample_index[index])
        if position >= len(self.streams[corpus]):
            raise IndexError(
                f"corpus '{corpus}' stream has {len(self.streams[corpus])} samples, sample {position} asked"
            )
        return corpus, position

    def sample(self, index: int, start: Mapping[str, int]) -> dict[str, Any]:
        corpus, position = self.locate(index, start)
        return self.streams[corpus][position]

    def micro_batches(
        self,
        step_index: int,
        dp_rank: int,
        dp_size: int,
        micro_batch_size: int,
        start: Mapping[str, int],
    ) -> list[dict[str, torch.Tensor]]:
        """This data-parallel rank's micro-batches of step ``step_index``: tokens, labels, loss_mask.

        ``start``: samples of each corpus consumed before this phase."""
        first_of_step, _ = self.step_sample_range(step_index)
        local = self.global_batch_size // dp_size
        first = first_of_step + dp_rank * local
        batches = []
        for m in range(local // micro_batch_size):
            lo = first + m * micro_batch_size
            samples = [self.sample(i, start) for i in range(lo, lo + micro_batch_size)]
            batches.append(
                {
                    "tokens": torch.stack([torch.as_tensor(s["tokens"]) for s in samples]).long(),
                    "labels": torch.stack([torch.as_tensor(s["labels"]) for s in samples]).long(),
                    "loss_mask": torch.stack([torch.as_tensor(s["loss_mask"]) for s in samples]).float(),
                }
            )
        return batches


def _config(tokenizer: Any, blend: tuple[list[str], list[float] | None], seq: int, seed: int) -> Any:
    return gpt_dataset_config(
        MegatronTokenizerAdapter(tokenizer),
        seq,
        seed=seed,
        blend=blend,
        split="100,0,0",
        # RoPE in mcore ignores position ids, and the HF export must see the same positions:
        # plain 0..s-1 positions, one causal mask over the packed window (Megatron's default).
        reset_position_ids=False,
    )


def build_phase_data(
    tokenizer: Any,
    prefixes: Mapping[str, str],
    blend: Mapping[str, float],
    *,
    sequence_length: int,
    num_samples: int,
    global_batch_size: int,
    seed: int,
    budgets: Mapping[str, int],
) -> PhaseData:
    """The phase's data: ``num_samples`` blended samples over per-corpus streams.

    ``prefixes`` maps corpus names to Megatron .bin/.idx prefixes (the data stage's
    ``indexed_<name>`` outputs); ``budgets`` the stage-long stream size per corpus
    (:func:`corpus_budgets`: the same in every phase, so the streams are identical).
    Indices are built in memory (no cache directory), the same on every rank.
    """
    missing = [name for name in blend if name not in prefixes or name not in budgets]
    if missing:
        raise KeyError(
            f"blend names corpora the data stage did not index: {missing} (have {sorted(prefixes)})"
        )
    corpora = list(blend)
    total = float(sum(blend.values()))
    weights = [blend[name] / total for name in corpora]
    # Always a weighted blend (a single corpus gets 1.0): a BlendedDataset with a corpus index.
    blended, _, _ = build_gpt_datasets(
        _config(tokenizer, ([prefixes[n] for n in corpora], weights), sequence_length, seed),
        [num_samples, 0, 0],
    )
    if len(blended) < num_samples:
        raise RuntimeError(f"Megatron built {len(blended)} samples, fewer than the {num_samples} asked for")
    streams = {}
    for name in corpora:
        stream, _, _ = build_gpt_datasets(
            _config(tokenizer, ([prefixes[name]], None), sequence_length, seed), [budgets[name], 0, 0]
        )
        streams[name] = stream
    return PhaseData(blended=blended, streams=streams, corpora=corpora, global_batch_size=global_batch_size)
