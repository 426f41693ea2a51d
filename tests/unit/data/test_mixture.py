"""Mixture: deterministic order, accounting, resume with no repeats and no skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slingshot.data.corpora import CorpusSpec, write_jsonl
from slingshot.data.mixture import Mixture, corpus_source, list_source


def _sources() -> dict:
    # Sizes chosen so corpora wrap around (epochs) within the test.
    return {
        "general": list_source([{"id": f"g{i}"} for i in range(37)]),
        "reasoning": list_source([{"id": f"r{i}"} for i in range(11)]),
        "code": list_source([{"id": f"c{i}"} for i in range(5)]),
    }


WEIGHTS = {"general": 0.6, "reasoning": 0.3, "code": 0.1}


def _ids(samples: list) -> list[tuple]:
    return [(s.step, s.corpus, s.epoch, s.record["id"]) for s in samples]


@pytest.mark.parametrize("cut", [0, 1, 63, 64, 65, 200, 499])
def test_resume_matches_uninterrupted_run(cut: int) -> None:
    reference = Mixture(_sources(), WEIGHTS, seed=3, block_size=64)
    full = _ids(reference.take(500))
    first = Mixture(_sources(), WEIGHTS, seed=3, block_size=64)
    head = _ids(first.take(cut))
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
    second = Mixture(_sources(), WEIGHTS, seed=3, block_size=64)
    second.load_state_dict(state)
    tail = _ids(second.take(500 - cut))
    assert head + tail == full
    assert second.consumed == reference.consumed and sum(second.consumed.values()) == 500


def test_resume_from_jsonl_corpora(tmp_path: Path) -> None:
    specs = []
    for name, n in (("a", 23), ("b", 9)):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": f"{name}{i}"} for i in range(n)])
        specs.append(CorpusSpec(name=name, path=str(tmp_path / f"{name}.jsonl")))

    def make() -> Mixture:
        return Mixture({s.name: corpus_source(s) for s in specs}, {"a": 2.0, "b": 1.0}, seed=0, block_size=16)

    full = [s.record["id"] for s in make().take(120)]
    m = make()
    head = [s.record["id"] for s in m.take(47)]
    resumed = make()
    resumed.load_state_dict(m.state_dict())
    assert head + [s.record["id"] for s in resumed.take(73)] == full


def test_consumed_accounting_and_proportions() -> None:
    m = Mixture(_sources(), WEIGHTS, seed=1)
    samples = m.take(5000)
    counts = {n: sum(s.corpus == n for s in samples) for n in WEIGHTS}
    assert counts == m.consumed
    for name, w in WEIGHTS.items():
        assert abs(counts[name] / 5000 - w) < 0.03
    # No repeats within an epoch, every record seen once per epoch.
    code = [s.record["id"] for s in samples if s.corpus == "code"][:5]
    assert sorted(code) == [f"c{i}" for i in range(5)]


def test_order_depends_on_seed() -> None:
    a = _ids(Mixture(_sources(), WEIGHTS, seed=1).take(50))
    assert a == _ids(Mixture(_sources(), WEIGHTS, seed=1).take(50))
    assert a != _ids(Mixture(_sources(), WEIGHTS, seed=2).take(50))


def test_refuses_state_of_another_blend() -> None:
    m = Mixture(_sources(), WEIGHTS, seed=1)
    m.take(10)
    other = Mixture(_sources(), {"general": 0.5, "reasoning": 0.4, "code": 0.1}, seed=1)
    with pytest.raises(ValueError, match="another blend"):
        other.load_state_dict(m.state_dict())


def test_empty_corpus_fails() -> None:
    m = Mixture({"x": list_source([])}, {"x": 1.0}, seed=0)
    with pytest.raises(ValueError, match="empty"):
        m.take(1)
