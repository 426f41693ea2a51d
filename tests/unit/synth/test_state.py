"""The synthesis state: admitting a round's candidates, and a save/load round trip."""

from __future__ import annotations

import torch

from slingshot.synth.state import SynthState, feature_pairs, pool_record


def _records(n: int, round_index: int) -> list[dict]:
    entries = [{"id": f"e{i}", "question": f"q{i}", "family": "gcd", "hash": f"h{i}"} for i in range(n)]
    return [pool_record(e, f"s{i}", str(i), 0.5, round_index) for i, e in enumerate(entries)]


def test_pool_record_and_pairs():
    entry = {"id": "x", "question": "What is 2+2?", "dataset": "basic_arithmetic"}
    record = pool_record(entry, "<think>\n2+2\n</think>\n\\boxed{4}", "4", 0.25, 3)
    assert record["problem"] == "What is 2+2?" and record["task"] == "basic_arithmetic"
    assert record["round"] == 3 and record["difficulty"] == 0.25 and record["entry"] is entry
    assert pool_record({"question": "?"}, "s", "a", 0.0, 0)["task"] == "synthetic"
    assert feature_pairs([record]) == [("What is 2+2?", "<think>\n2+2\n</think>\n\\boxed{4}")]


def test_admit_adds_kept_candidates_up_to_the_room_left():
    state = SynthState(pool=_records(2, 0), features=torch.eye(4)[:2])
    candidates = _records(4, 1)
    feats = torch.eye(4)[[2, 3, 1, 0]]
    keep = torch.tensor([True, False, True, True])
    nearest = torch.tensor([5, 6, 7, 8])
    kept = state.admit(candidates, feats, keep, nearest, room=2)
    assert kept == [0, 2]  # the third kept candidate finds no room
    assert [r["solution"] for r in state.pool] == ["s0", "s1", "s0", "s2"]
    assert [r.get("admitted_cluster") for r in state.pool] == [None, None, 5, 7]
    torch.testing.assert_close(state.features, torch.eye(4)[[0, 1, 2, 1]])
    # Every quality-passed candidate is recorded, admitted or not.
    torch.testing.assert_close(state.cand_features, feats)
    assert state.cand_kept.tolist() == [True, False, True, False]
    # A second round appends to the candidate record; no room admits nothing.
    assert state.admit(_records(1, 2), torch.eye(4)[:1], torch.tensor([True]), torch.tensor([0]), 0) == []
    assert len(state.pool) == 4 and state.cand_kept.tolist() == [True, False, True, False, False]
    assert state.cand_features.shape == (5, 4)
    # An empty round changes nothing.
    assert state.admit([], torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool), torch.zeros(0), 5) == []
    assert state.cand_features.shape == (5, 4)


def test_save_and_load_restore_everything_and_the_rng(tmp_path):
    state = SynthState(round=3, pool=_records(2, 0), features=torch.eye(3)[:2], seen={"b", "a"}, tokens=17)
    state.admit(_records(1, 1), torch.eye(3)[2:], torch.tensor([True]), torch.tensor([1]), room=5)
    state.history = [{"pool_size": 2.0}, {"pool_size": 3.0}]
    torch.manual_seed(123)
    state.save(tmp_path)
    expected = torch.rand(3)  # the draw after the save
    torch.manual_seed(0)
    loaded = SynthState()
    loaded.load(tmp_path)
    torch.testing.assert_close(torch.rand(3), expected)
    assert loaded.round == 3 and loaded.tokens == 17 and loaded.seen == {"a", "b"}
    assert loaded.pool == state.pool and loaded.history == state.history
    torch.testing.assert_close(loaded.features, state.features)
    torch.testing.assert_close(loaded.cand_features, state.cand_features)
    assert loaded.cand_kept.tolist() == [True]
