"""Procedural teacher: every trace verifies, wrong traces at the requested rate, new problems."""

from __future__ import annotations

import pytest

from slingshot.data.tasks import BUILTIN_FAMILIES, SplitSizes, content_hash, make_splits
from slingshot.data.teacher import ProceduralTeacher, error_rate_of, render_trace, supported_datasets
from slingshot.rewards import extract, is_correct

PER_FAMILY = 250


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    splits = make_splits(BUILTIN_FAMILIES, SplitSizes(train=PER_FAMILY, validation=5, test=10), seed=123)
    return splits["train"]


def test_covers_at_least_eight_families() -> None:
    assert len(supported_datasets()) >= 8
    assert set(BUILTIN_FAMILIES) <= set(supported_datasets())


def test_all_traces_pass_the_verifier(entries: list[dict]) -> None:
    assert len(entries) >= 3000
    failures = []
    for entry in entries:
        trace = render_trace(entry)
        ex = extract(trace.completion)
        if not (ex.parse_ok and ex.source == "boxed" and is_correct(entry, trace.completion)):
            failures.append((entry["family"], entry["question"], trace.completion))
    assert not failures, failures[:5]


def test_traces_are_short(entries: list[dict]) -> None:
    lengths = [len(render_trace(e).completion) for e in entries]
    assert max(lengths) < 700
    assert sum(lengths) / len(lengths) < 250


def test_wrong_trace_rate_within_tolerance(entries: list[dict]) -> None:
    teacher = ProceduralTeacher(error_rate=0.3, seed=5)
    traces = [teacher.solve(e) for e in entries]
    # Binomial sd at n=3000 is 0.0084: +-0.035 is ~4 sd.
    assert abs(error_rate_of(traces) - 0.3) < 0.035
    for entry, trace in zip(entries, traces, strict=True):
        assert is_correct(entry, trace.completion) == trace.correct, (entry["question"], trace.completion)


def test_wrong_trace_corrupts_an_intermediate_step(entries: list[dict]) -> None:
    for entry in entries[::97]:
        good = render_trace(entry)
        bad = render_trace(entry, wrong=True)
        good_lines, bad_lines = good.thought.splitlines(), bad.thought.splitlines()
        assert good_lines[-1] != bad_lines[-1]  # the final answer line
        assert good_lines[:-1] != bad_lines[:-1]  # and a reasoning step
        assert not is_correct(entry, bad.completion)


def test_solve_is_deterministic_per_entry_and_sample(entries: list[dict]) -> None:
    a = ProceduralTeacher(error_rate=0.5, seed=1)
    b = ProceduralTeacher(error_rate=0.5, seed=1)
    e = entries[0]
    assert a.sample(e, 6) == b.sample(e, 6)
    assert len({t.completion for t in a.sample(e, 16)}) > 1


def test_new_problems_from_few_shot_examples(entries: list[dict]) -> None:
    examples = [e for e in entries if e["family"] in ("gcd", "letter_counting", "base_conversion")][::50]
    held = {content_hash(e["question"]) for e in entries[:200]}
    teacher = ProceduralTeacher(seed=3)
    new = teacher.new_problems(examples, 60, seed=11, exclude_hashes=held)
    again = ProceduralTeacher(seed=3).new_problems(examples, 60, seed=11, exclude_hashes=held)
    assert [e["hash"] for e in new] == [e["hash"] for e in again]
    assert len({e["hash"] for e in new}) == 60
    assert {e["family"] for e in new} <= {e["family"] for e in examples}
    assert not {e["hash"] for e in new} & (held | {e["hash"] for e in examples})
    # Difficulty really varies, and the teacher can solve what it invents.
    assert len({tuple(sorted(e["dataset_kwargs"].items())) for e in new}) > 3
    assert all(is_correct(e, teacher.solve(e).completion) for e in new)


def test_error_rate_bounds() -> None:
    with pytest.raises(ValueError):
        ProceduralTeacher(error_rate=1.5)
