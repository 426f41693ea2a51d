"""Verifiers of user RL prompt sets (``stages.prorl.datasets[].verifier``), by name.

* ``math``: math-verify of the final answer (the last ``\\boxed{}`` or ``<answer>`` after the
  thought, else the last number written after it) against the gold answer;
* ``exact``: that final answer (else the whole text after the thought), trimmed, equals the
  gold answer trimmed;
* ``reasoning_gym:<family>``: the reasoning-gym scorer of a slingshot task family or of a
  reasoning-gym dataset name, given the row's prompt and answer (no row metadata: scorers
  that need more than the answer, e.g. countdown's numbers, do not fit a prompt set);
* ``module:function``: a user function ``(prompt, response, answer) -> float``; an import
  error or an exception it raises names the set, the function and the row.

A prompt-set entry (written by :mod:`slingshot.data.prompt_sets`) carries its ``verifier``;
a reasoning-gym task entry carries none and is scored by :func:`slingshot.rewards.verify.score`.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from slingshot.rewards.extract import THINK_TAGS, answer_region, extract
from slingshot.rewards.verify import math_equal, score

UserReward = Callable[[str, str, str], float]
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_BUILTIN = ("math", "exact")


class RewardFunctionError(RuntimeError):
    """A user reward function that cannot be imported, raised, or returned no number."""


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def final_answer(output: str, tags: tuple[str, str] = THINK_TAGS, fallback: str = "number") -> str | None:
    """The boxed/tagged answer after the thought; else the last number (``fallback="number"``)
    or the whole trimmed region (``"text"``); None when the output was cut off mid-thought."""
    found = extract(output, tags)
    if found.answer is not None or found.source == "truncated":
        return found.answer
    _, region = answer_region(output, tags)
    assert region is not None  # not truncated
    return last_number(region) if fallback == "number" else region.strip()


def is_user_function(verifier: str) -> bool:
    return verifier not in _BUILTIN and not verifier.startswith("reasoning_gym:")


@lru_cache(maxsize=64)
def load_user_function(set_name: str, verifier: str) -> UserReward:
    """Import ``module:function``; failures name the prompt set and the function."""
    module_name, _, attr = verifier.partition(":")
    where = f"prompt set {set_name!r}: reward function {verifier!r}"
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure is the same problem to the user
        raise RewardFunctionError(
            f"{where}: cannot import {module_name!r} ({type(error).__name__}: {error})"
        ) from error
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardFunctionError(f"{where}: module {module_name!r} has no function {attr!r}")
    return fn


def _user_reward(entry: dict[str, Any], output: str) -> float:
    fn = load_user_function(entry["family"], entry["verifier"])
    where = f"prompt set {entry['family']!r}: reward function {entry['verifier']!r} on row {entry['source']}"
    try:
        value = fn(entry["question"], output, entry["answer"])
    except Exception as error:  # noqa: BLE001 - reported by name, then the job stops
        raise RewardFunctionError(f"{where} raised {type(error).__name__}: {error}") from error
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RewardFunctionError(f"{where} returned {value!r}, expected a finite float")
    return float(value)


def reward(entry: dict[str, Any], output: str, tags: tuple[str, str] = THINK_TAGS) -> float:
    """The reward of one finished response to a task or prompt-set entry."""
    verifier = entry.get("verifier")
    if verifier is None or verifier.startswith("reasoning_gym:"):
        return score(entry, output, tags=tags)  # the entry names its reasoning-gym dataset
    if verifier == "math":
        answer = final_answer(output, tags, "number")
        return 1.0 if answer is not None and math_equal(str(entry["answer"]), answer) else 0.0
    if verifier == "exact":
        answer = final_answer(output, tags, "text")
        return 1.0 if answer is not None and answer.strip() == str(entry["answer"]).strip() else 0.0
    return _user_reward(entry, output)
