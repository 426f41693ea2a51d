"""The quality vote, the diversity filter and few-shot sampling of Prismatic synthesis."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from slingshot.rewards.extract import extract_answer
from slingshot.synth.generators import TeacherGenerator
from slingshot.synth.selection import (
    diversity_filter,
    n_clusters,
    normalize_answer,
    quality_vote,
    sample_few_shot,
    sparse_clusters,
)


# --------------------------------------------------------------------------- quality filter
def test_quality_vote_keeps_only_strict_majorities(train_entries):
    # A teacher that is wrong 60% of the time: many problems have no majority.
    gen = TeacherGenerator(error_rate=0.6, spread=0.5, seed=7)
    kept = rejected = 0
    for k in (3, 4):
        for i, entry in enumerate(train_entries[:60]):
            completions = gen.solve(entry, k, seed=i)
            answers = [normalize_answer(extract_answer(c)) for c in completions]
            top, count = Counter(a for a in answers if a is not None).most_common(1)[0]
            vote = quality_vote(completions)
            if 2 * count > k:
                kept += 1
                assert vote.passed and vote.answer == top
                assert vote.solution is not None and answers[vote.solution] == top
                assert vote.agreement == count / k
            else:
                rejected += 1
                assert not vote.passed and vote.solution is None
    assert kept > 10 and rejected > 10  # both branches really exercised


def test_quality_vote_ties_and_unparseable_are_rejected():
    box = "<think>\nx\n</think>\n\\boxed{{{}}}".format
    assert not quality_vote([box(4), box(4), box(5), box(5)]).passed  # 2-2 is no strict majority
    assert not quality_vote([box(4), "<think>cut off", "no answer"]).passed  # None votes against
    vote = quality_vote([box(" 7 "), box("7"), box(8)])
    assert (
        vote.passed and vote.answer == "7" and vote.solution == 0 and vote.agreement == pytest.approx(2 / 3)
    )


def test_diversity_filter_keeps_only_candidates_of_least_populated_clusters():
    gen = torch.Generator().manual_seed(0)
    centroids = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen), dim=1)
    sizes = torch.tensor([9, 2, 5, 2, 7, 1])  # least populated half: clusters 5, 1, 3
    sparse = sparse_clusters(sizes, 0.5)
    assert sparse.nonzero().flatten().tolist() == [1, 3, 5]
    # Candidates close to each centroid (several per cluster).
    owner = torch.arange(6).repeat_interleave(4)
    cands = centroids[owner] + 0.05 * torch.randn(24, 16, generator=gen)
    keep, nearest = diversity_filter(cands, centroids, sparse)
    assert nearest.tolist() == owner.tolist()
    assert keep.tolist() == [int(o) in (1, 3, 5) for o in owner]
    # Ties are broken toward the lower cluster index; at least one cluster is always kept.
    assert sparse_clusters(torch.tensor([3, 3, 3, 3]), 0.5).tolist() == [True, True, False, False]
    assert sparse_clusters(torch.tensor([4, 1]), 0.01).tolist() == [False, True]


def test_few_shot_sampling_follows_difficulty():
    import numpy as np

    rng = np.random.default_rng(0)
    difficulties = [0.0] * 10 + [1.0] * 10
    counts = Counter(i for _ in range(400) for i in sample_few_shot(difficulties, 1, rng, floor=0.1))
    hard = sum(counts[i] for i in range(10, 20))
    assert hard / 400 == pytest.approx(1.0 / 1.1 * 10 / 10, abs=0.06)  # 1.1 / (0.1 + 1.1) ≈ 0.92
    picks = sample_few_shot(difficulties, 5, rng, floor=0.1)
    assert len(set(picks)) == 5  # without replacement


def test_normalize_answer_and_cluster_count():
    assert normalize_answer("  3 /\n 4 ") == "3 / 4"
    assert normalize_answer("   ") is None and normalize_answer(None) is None
    assert n_clusters(70, 0.2) == 14
    assert n_clusters(3, 0.1) == 1  # round(0.3) = 0, at least one cluster
    assert n_clusters(5, 1.0) == 5
