"""The two filters and the few-shot sampling of Prismatic synthesis (pure, no I/O).

* Quality: keep a problem only if a STRICT majority of its sampled solutions agree on
  the final answer; keep one agreeing solution. Its difficulty is 1 − agreement.
* Diversity: cluster the pool's features; keep a candidate only if its nearest
  centroid is one of the ``keep_fraction`` least populated clusters.
* Few-shot examples are drawn from the pool with probability ∝ floor + difficulty, so
  problems the generator finds hard are imitated more often and easy ones still appear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from slingshot.algorithms.kmeans import nearest_centroid
from slingshot.algorithms.metrics import majority_vote
from slingshot.rewards.extract import extract_answer


def normalize_answer(answer: str | None) -> str | None:
    """Whitespace-insensitive comparison of final answers; None stays None (a vote against)."""
    if answer is None:
        return None
    text = " ".join(answer.split())
    return text or None


@dataclass(frozen=True)
class Vote:
    answer: str | None  # the strict-majority answer, None if there is none
    solution: int | None  # index of the first solution giving it
    agreement: float  # votes for the most common answer / solutions

    @property
    def passed(self) -> bool:
        return self.answer is not None


def quality_vote(completions: Sequence[str]) -> Vote:
    """Strict-majority vote over the completions' extracted final answers."""
    if not completions:
        return Vote(None, None, 0.0)
    answers = [normalize_answer(extract_answer(c)) for c in completions]
    winner, count = majority_vote(answers)
    index = answers.index(winner) if winner is not None else None
    return Vote(winner, index, count / len(completions))


def n_clusters(pool_size: int, fraction: float) -> int:
    """k = fraction × pool (SPEC: 10%), at least 1 and at most the pool."""
    return max(1, min(pool_size, round(fraction * pool_size)))


def sparse_clusters(sizes: Tensor, keep_fraction: float) -> Tensor:
    """Bool mask over clusters: the ceil(keep_fraction × k) least populated (ties → lower index)."""
    k = sizes.numel()
    n_keep = max(1, min(k, math.ceil(keep_fraction * k)))
    order = torch.sort(sizes, stable=True).indices  # ascending size; stable keeps index order on ties
    mask = torch.zeros(k, dtype=torch.bool)
    mask[order[:n_keep]] = True
    return mask


def diversity_filter(features: Tensor, centroids: Tensor, sparse: Tensor) -> tuple[Tensor, Tensor]:
    """(keep mask [N], nearest centroid [N]) for candidate features."""
    if features.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.int64)
    nearest = nearest_centroid(features, centroids)
    return sparse[nearest], nearest


def sample_few_shot(
    difficulties: Sequence[float], n: int, rng: np.random.Generator, floor: float
) -> list[int]:
    """``n`` distinct pool indices (fewer if the pool is smaller), ∝ floor + difficulty."""
    weights = np.asarray(difficulties, dtype=np.float64) + floor
    take = min(n, len(weights))
    return [int(i) for i in rng.choice(len(weights), size=take, replace=False, p=weights / weights.sum())]
