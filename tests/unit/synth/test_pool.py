"""Building the pool: seeds with correct solutions, few-shot requests, the majority filter."""

from __future__ import annotations

from collections.abc import Sequence

from slingshot.config import SynthConfig
from slingshot.data.tasks import derive_seed
from slingshot.data.teacher import render_trace
from slingshot.rewards.extract import extract_answer
from slingshot.synth.generators import TeacherGenerator, request_seed
from slingshot.synth.pool import build_seed_pool, majority_verified, new_problems, verifies
from slingshot.synth.selection import normalize_answer
from slingshot.synth.state import SynthState, pool_record

BOX = "<think>\nwork\n</think>\n\\boxed{{{}}}".format


class ScriptedGenerator:
    """Answers ``solve`` from a script keyed by problem id; records every call's arguments."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.solve_calls: list[tuple[str, int, int]] = []
        self.requests: list[tuple[list[str], int, int]] = []

    def solve(self, problem: dict, k: int, seed: int) -> list[str]:
        self.solve_calls.append((problem["id"], k, seed))
        return [BOX(a) for a in self.answers[problem["id"]]][:k]

    def new_problems(self, examples: Sequence[dict], n: int, seed: int, exclude: set[str]) -> list[dict]:
        self.requests.append(([e["id"] for e in examples], n, seed))
        start = len(self.requests) * 10
        return [
            {"id": f"p{start + i}", "question": f"new {start + i}", "hash": f"h{start + i}"} for i in range(n)
        ]


def test_verifies_by_exact_string_or_the_verifier(train_entries):
    entry = train_entries[0]
    assert verifies(entry, BOX(f"  {entry['answer']} "))
    assert not verifies(entry, BOX("definitely not it"))
    assert not verifies(entry, "no box at all")


def test_seed_pool_from_a_perfect_and_a_hopeless_generator(train_entries):
    cfg = SynthConfig(seed_pool_size=6, solutions_per_problem=3)
    pool, stats = build_seed_pool(train_entries, cfg, TeacherGenerator(0.0, 0.5, seed=1), seed=4)
    assert stats == {"seed_pool": 6.0, "seed_generator_solved": 1.0}
    assert len({r["entry"]["id"] for r in pool}) == 6 and all(r["difficulty"] == 0.0 for r in pool)
    assert all(r["round"] == 0 for r in pool)
    # The same seed draws the same tasks (in file order), whatever the generator.
    hopeless = ScriptedGenerator({e["id"]: ["wrong", "wrong", "wrong"] for e in train_entries})
    bad_pool, bad_stats = build_seed_pool(train_entries, cfg, hopeless, seed=4)
    assert [r["entry"]["id"] for r in bad_pool] == [r["entry"]["id"] for r in pool]
    assert bad_stats["seed_generator_solved"] == 0.0
    for record in bad_pool:  # the reference trace stands in, with difficulty 1
        assert record["solution"] == render_trace(record["entry"]).completion
        assert record["answer"] == normalize_answer(extract_answer(record["solution"]))
        assert record["difficulty"] == 1.0
    assert hopeless.solve_calls[0][1:] == (3, derive_seed(4, "seed", bad_pool[0]["entry"]["id"]))


def test_new_problems_seeds_each_request_and_grows_seen():
    cfg = SynthConfig(requests_per_round=3, problems_per_request=2, few_shot=2)
    pool = [pool_record({"id": f"e{i}", "question": f"q{i}"}, "s", "a", 0.5, 0) for i in range(4)]
    state = SynthState(pool=pool, seen={"old"})
    gen = ScriptedGenerator()
    problems = new_problems(cfg, state, gen, seed=9, round_index=2)
    assert [p["id"] for p in problems] == ["p10", "p11", "p20", "p21", "p30", "p31"]
    assert [seed for _, _, seed in gen.requests] == [request_seed(9, 2, r) for r in range(3)]
    assert all(len(set(shots)) == 2 and n == 2 for shots, n, _ in gen.requests)
    assert state.seen == {"old", "h10", "h11", "h20", "h21", "h30", "h31"}


def test_majority_verified_keeps_strict_majorities_with_their_agreement():
    cfg = SynthConfig(solutions_per_problem=3)
    problems = [{"id": i, "question": f"q{i}", "hash": f"h{i}"} for i in ("a", "b", "c")]
    gen = ScriptedGenerator({"a": ["7", "8", "7"], "b": ["1", "2", "3"], "c": ["5", "5", "5"]})
    passed = majority_verified(cfg, problems, gen, seed=1, round_index=4)
    assert [(r["entry"]["id"], r["answer"]) for r in passed] == [("a", "7"), ("c", "5")]
    assert [r["difficulty"] for r in passed] == [1.0 - 2 / 3, 0.0]
    assert passed[0]["solution"] == BOX("7") and all(r["round"] == 4 for r in passed)
    assert [seed for _, _, seed in gen.solve_calls] == [derive_seed(1, "solve", 4, f"h{i}") for i in "abc"]
