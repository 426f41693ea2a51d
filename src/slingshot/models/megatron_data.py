"""A pretraining phase's data: Megatron-Core's BlendedDataset over the data stage's
indexed corpora, read by a deterministic sample position (no DataLoader state).

The phase's dataset is a pure function of (corpora, blend weights, seed, sequence
length, number of samples), so the only thing a checkpoint needs to resume it exactly
is the position of the next sample. Step ``s`` (0-based within the phase) consumes
global samples ``[s*G, (s+1)*G)``; data-parallel rank ``r`` of ``D`` takes the
contiguous slice ``[s*G + r*G/D, s*G + (r+1)*G/D)``, cut into micro-batches. Every rank
can therefore count the samples each corpus contributed to the global batch without
communication (``BlendedDataset.dataset_index``).

A weighted blend is always used (a single corpus gets weight 1.0) so the top-level
dataset is a BlendedDataset with a per-sample corpus index in every phase.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slingshot.data.megatron_indexed import (
    MegatronTokenizerAdapter,
    build_gpt_datasets,
    gpt_dataset_config,
)


@dataclass
class PhaseData:
    """The phase's blended dataset plus what is needed to read and account for it."""

    dataset: Any  # megatron.core.datasets.blended_dataset.BlendedDataset
    corpora: list[str]  # blend order: dataset_id i -> corpora[i]
    weights: list[float]  # normalised
    global_batch_size: int
    sequence_length: int

    def __len__(self) -> int:
        return len(self.dataset)

    def step_sample_range(self, step_index: int) -> tuple[int, int]:
        """Global sample indices [start, end) of 0-based phase step ``step_index``."""
        start = step_index * self.global_batch_size
        return start, start + self.global_batch_size

    def corpus_counts(self, step_index: int) -> dict[str, int]:
        """Samples each corpus contributes to the global batch of ``step_index``."""
        start, end = self.step_sample_range(step_index)
        ids = np.asarray(self.dataset.dataset_index[start:end])
        counts = np.bincount(ids, minlength=len(self.corpora))
        return {name: int(counts[i]) for i, name in enumerate(self.corpora)}

    def micro_batches(
        self, step_index: int, dp_rank: int, dp_size: int, micro_batch_size: int
    ) -> list[dict[str, torch.Tensor]]:
        """This data-parallel rank's micro-batches of step ``step_index``: tokens, labels, loss_mask."""
        start, _ = self.step_sample_range(step_index)
        local = self.global_batch_size // dp_size
        first = start + dp_rank * local
        batches = []
        for m in range(local // micro_batch_size):
            lo = first + m * micro_batch_size
            samples = [self.dataset[i] for i in range(lo, lo + micro_batch_size)]
            batches.append(
                {
                    "tokens": torch.stack([torch.as_tensor(s["tokens"]) for s in samples]).long(),
                    "labels": torch.stack([torch.as_tensor(s["labels"]) for s in samples]).long(),
                    "loss_mask": torch.stack([torch.as_tensor(s["loss_mask"]) for s in samples]).float(),
                }
            )
        return batches


def build_phase_data(
    tokenizer: Any,
    prefixes: Mapping[str, str],
    blend: Mapping[str, float],
    *,
    sequence_length: int,
    num_samples: int,
    global_batch_size: int,
    seed: int,
) -> PhaseData:
    """BlendedDataset of at least ``num_samples`` samples over ``blend`` (corpus -> weight).

    ``prefixes`` maps corpus names to Megatron .bin/.idx prefixes (the data stage's
    ``indexed_<name>`` outputs); indices are built in memory (no cache directory), the
    same on every rank.
    """
    missing = [name for name in blend if name not in prefixes]
    if missing:
        raise KeyError(
            f"blend names corpora the data stage did not index: {missing} (have {sorted(prefixes)})"
        )
    corpora = list(blend)
    total = float(sum(blend.values()))
    weights = [blend[name] / total for name in corpora]
    adapter = MegatronTokenizerAdapter(tokenizer)
    config = gpt_dataset_config(
        adapter,
        sequence_length,
        seed=seed,
        blend=([prefixes[name] for name in corpora], weights),
        split="100,0,0",
        # RoPE in mcore ignores position ids, and the HF export must see the same positions:
        # plain 0..s-1 positions, one causal mask over the packed window (Megatron's default).
        reset_position_ids=False,
    )
    train, _, _ = build_gpt_datasets(config, [num_samples, 0, 0])
    if len(train) < num_samples:
        raise RuntimeError(f"Megatron built {len(train)} samples, fewer than the {num_samples} asked for")
    return PhaseData(
        dataset=train,
        corpora=corpora,
        weights=weights,
        global_batch_size=global_batch_size,
        sequence_length=sequence_length,
    )
