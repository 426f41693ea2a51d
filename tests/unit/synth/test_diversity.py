"""G-Vendi of the pool, and the selected set against random subsets, on hand-built features."""

from __future__ import annotations

import pytest
import torch

from slingshot.synth.diversity import baseline_comparison, pool_gvendi, random_subset
from slingshot.synth.state import SynthState


def test_pool_gvendi_of_orthonormal_and_parallel_rows():
    assert pool_gvendi(torch.zeros(0, 8)) == 0.0
    assert pool_gvendi(torch.eye(4)) == pytest.approx(4.0)  # four orthonormal rows
    assert pool_gvendi(torch.ones(5, 3)) == pytest.approx(1.0)  # all parallel


def test_nothing_selected_reports_only_the_size():
    assert baseline_comparison(SynthState(), seed=0) == {"selected_size": 0.0}
    state = SynthState(cand_features=torch.eye(2), cand_kept=torch.tensor([False, False]))
    assert baseline_comparison(state, seed=0) == {"selected_size": 0.0}


def test_selecting_every_candidate_ties_with_every_random_subset():
    # A random subset of the same size is then the whole set again: no draw is beaten.
    state = SynthState(cand_features=torch.eye(4), cand_kept=torch.ones(4, dtype=torch.bool))
    m = baseline_comparison(state, seed=3)
    assert m["selected_size"] == 4.0 and m["candidates"] == 4.0
    assert m["gvendi_selected"] == pytest.approx(4.0) and m["gvendi_selected_qinf"] == pytest.approx(4.0)
    assert m["gvendi_random_subset_mean"] == pytest.approx(4.0) and m["gvendi_random_subset_std"] == 0.0
    assert m["gvendi_selected_beats_random_frac"] == 0.0


def test_four_directions_beat_subsets_padded_with_copies():
    # Selected: one row per direction (G-Vendi 4). Candidates add 4 copies of e0, so most random
    # 4-subsets miss a direction; none can score above 4.
    feats = torch.cat([torch.eye(4), torch.eye(4)[[0, 0, 0, 0]]])
    kept = torch.tensor([True] * 4 + [False] * 4)
    m = baseline_comparison(SynthState(cand_features=feats, cand_kept=kept), seed=0)
    assert m["selected_size"] == 4.0 and m["candidates"] == 8.0
    assert m["gvendi_selected"] == pytest.approx(4.0)
    assert 1.0 <= m["gvendi_random_subset_mean"] < 4.0
    assert 0.0 < m["gvendi_selected_beats_random_frac"] <= 1.0
    # Seeded: the same draws again.
    again = baseline_comparison(SynthState(cand_features=feats, cand_kept=kept), seed=0)
    assert again == m


def _record(name: str, round_index: int) -> dict:
    return {"problem": name, "solution": name, "answer": "0", "task": "t", "round": round_index}


def test_the_random_subset_is_the_seeds_plus_as_many_random_candidates_as_were_selected():
    state = SynthState()
    state.pool = [_record("seed0", 0), _record("seed1", 0)]
    state.features = torch.eye(8)[:2]
    candidates = [_record(f"c{i}", 1) for i in range(5)]
    keep = torch.tensor([True, False, True, False, False])
    state.admit(candidates, torch.eye(8)[2:7], keep, torch.zeros(5, dtype=torch.int64), room=10)
    records, features = random_subset(state, seed=5)
    assert [r["problem"] for r in records[:2]] == ["seed0", "seed1"]
    chosen = [r["problem"] for r in records[2:]]
    assert len(chosen) == 2 and len(set(chosen)) == 2 and chosen == sorted(chosen)  # generation order
    # Each record's features row is its own (candidate ci has row e_{2+i}).
    assert torch.equal(features[2:], torch.stack([torch.eye(8)[2 + int(c[1:])] for c in chosen]))
    again, _ = random_subset(state, seed=5)
    assert again == records  # seeded
    draws = {tuple(r["problem"] for r in random_subset(state, seed=s)[0][2:]) for s in range(20)}
    assert len(draws) > 1  # not the filter's choice every time
    state.candidates = []  # a state resumed from a checkpoint without the candidate records
    assert random_subset(state, seed=5) is None
