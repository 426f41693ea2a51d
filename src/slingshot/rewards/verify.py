"""Verifiers: ``score(task_entry, model_output) -> float`` in [0, 1].

Numeric ("math") families are checked with math-verify first (it accepts ``13``,
``13.0``, ``\\frac{26}{2}``...); if it does not confirm equality, the family's own
reasoning-gym ``score_answer`` decides (it knows task formats such as sorted lists or
countdown expressions, and may give partial credit). Entries without a reasoning-gym
dataset (user math data) are checked by math-verify alone.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from slingshot.data.tasks import TASK_FAMILIES, rg_score
from slingshot.rewards.extract import THINK_TAGS, extract

CORRECT_THRESHOLD = 1.0 - 1e-9


def _is_math(entry: dict[str, Any]) -> bool:
    if "math" in entry:
        return bool(entry["math"])
    fam = TASK_FAMILIES.get(entry.get("family", ""))
    if fam is not None:
        return fam.math
    return not (entry.get("dataset") or entry.get("metadata", {}).get("source_dataset"))


def _timeout(seconds: int) -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set: elsewhere
    # (rollout worker threads) run without one rather than fail every comparison.
    return seconds if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout: int | None) -> Any:
    from math_verify import parse

    return parse(f"${answer}$", parsing_timeout=timeout)


def math_equal(gold: str, predicted: str) -> bool:
    """math-verify equivalence; any parser failure counts as not equal."""
    from math_verify import parse, verify

    timeout = _timeout(5)
    try:
        pred = parse(f"${predicted}$", parsing_timeout=timeout)
        return bool(pred) and bool(verify(_parse_gold(gold, timeout), pred, timeout_seconds=timeout))
    except Exception:
        return False


def score_answer(entry: dict[str, Any], answer: str | None) -> float:
    """Score an already-extracted answer against a task entry."""
    if answer is None:
        return 0.0
    math = _is_math(entry)
    if math and math_equal(str(entry["answer"]), answer):
        return 1.0
    if entry.get("dataset") or entry.get("metadata", {}).get("source_dataset"):
        return rg_score(entry, answer)
    return 0.0


def score(
    task_entry: dict[str, Any], model_output: str, binary: bool = False, tags: tuple[str, str] = THINK_TAGS
) -> float:
    """Reward of one model output: 0 when truncated or no answer could be extracted.

    ``binary=True`` maps reasoning-gym partial credit (e.g. 0.01 for a well-formed wrong
    answer) to 0, for pass@k and majority votes.
    """
    value = score_answer(task_entry, extract(model_output, tags).answer)
    if binary:
        return 1.0 if value >= CORRECT_THRESHOLD else 0.0
    return value


def is_correct(task_entry: dict[str, Any], model_output: str) -> bool:
    return score(task_entry, model_output, binary=True) == 1.0
