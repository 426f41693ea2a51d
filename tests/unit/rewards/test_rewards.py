"""Answer extraction and scoring."""

from __future__ import annotations

import pytest

from slingshot.data.tasks import SplitSizes, make_splits
from slingshot.rewards import extract, extract_answer, last_boxed, parse_ok, score


@pytest.fixture(scope="module")
def tasks() -> dict[str, dict]:
    splits = make_splits(
        ["gcd", "number_sorting", "letter_counting"], SplitSizes(train=1, validation=1, test=1), 0
    )
    return {e["family"]: e for e in splits["train"]}


def test_boxed_with_nested_braces() -> None:
    assert last_boxed(r"x \boxed{\frac{1}{2}} y") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{a} then \boxed{{b}c}") == "{b}c"
    assert last_boxed(r"\boxed{unclosed {") is None
    assert last_boxed(r"\fbox{7}") == "7"


def test_answer_looked_for_after_think_only() -> None:
    out = "<think>\nmaybe \\boxed{3}\n</think>\nso \\boxed{4}"
    assert extract_answer(out) == "4"
    assert extract_answer("<think>\nmaybe \\boxed{3}\n</think>\nno answer") is None
    # The prompt may hold the opening tag: only the closing one is needed.
    assert extract_answer("2 + 2 = 4\n</think>\n\\boxed{4}") == "4"
    # No think tags at all: a non-reasoning model's whole output is the region.
    assert extract_answer("The answer is \\boxed{12}.") == "12"


def test_answer_tag() -> None:
    assert extract_answer("<think>x</think><answer> 42 </answer>") == "42"
    assert extract("<think>x</think><answer>1</answer> \\boxed{2}").source == "boxed"


def test_truncated_output_scores_zero(tasks: dict[str, dict]) -> None:
    gcd = tasks["gcd"]
    cut = f"<think>\nthe gcd is \\boxed{{{gcd['answer']}}} and"
    assert extract(cut).source == "truncated"
    assert not parse_ok(cut)
    assert score(gcd, cut) == 0.0
    assert score(gcd, "<think>ok</think> I give up") == 0.0


def test_math_verify_accepts_equivalent_forms(tasks: dict[str, dict]) -> None:
    gcd = tasks["gcd"]
    n = int(gcd["answer"])
    for form in (str(n), f"{n}.0", f"\\frac{{{2 * n}}}{{2}}", f"{n}.00"):
        assert score(gcd, f"<think>t</think>\\boxed{{{form}}}") == 1.0, form
    assert score(gcd, f"<think>t</think>\\boxed{{{n + 1}}}") == 0.0


def test_reasoning_gym_fallback_for_non_math_answers(tasks: dict[str, dict]) -> None:
    ns = tasks["number_sorting"]
    assert score(ns, f"<think>t</think>\\boxed{{{ns['answer']}}}") == 1.0
    assert score(ns, "<think>t</think>\\boxed{['1', '2']}") == 0.0


def test_partial_credit_and_binary(tasks: dict[str, dict]) -> None:
    lc = tasks["letter_counting"]
    wrong = str(int(lc["answer"]) + 1000)
    out = f"<think>t</think>\\boxed{{{wrong}}}"
    assert 0.0 <= score(lc, out) < 1.0
    assert score(lc, out, binary=True) == 0.0


def test_plain_math_entry_without_reasoning_gym() -> None:
    entry = {"id": "m1", "question": "1/2 + 1/4?", "answer": "\\frac{3}{4}"}
    assert score(entry, "<think>t</think>\\boxed{0.75}") == 1.0
    assert score(entry, "<think>t</think>\\boxed{0.7}") == 0.0


def test_scoring_works_off_the_main_thread(tasks: dict[str, dict]) -> None:
    import threading

    gcd = tasks["gcd"]
    out: list[float] = []
    t = threading.Thread(
        target=lambda: out.append(score(gcd, f"<think>t</think>\\boxed{{{gcd['answer']}.0}}"))
    )
    t.start()
    t.join()
    assert out == [1.0]
