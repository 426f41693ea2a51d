"""Prompt-set verifiers: math-verify on the boxed answer or the last number, exact match,
reasoning-gym scorers, and user functions whose failures are reported by name."""

from __future__ import annotations

import sys
import textwrap

import pytest

from slingshot.rewards.verifiers import RewardFunctionError, final_answer, load_user_function, reward


def _entry(verifier: str, answer: str, **extra: object) -> dict:
    return {
        "id": "mine:3",
        "family": "mine",
        "question": "What is half of one?",
        "answer": answer,
        "verifier": verifier,
        "source": "/data/mine.jsonl:3",
        **extra,
    }


def test_math_accepts_equivalent_forms_in_a_box_or_as_the_last_number():
    entry = _entry("math", "0.5")
    assert reward(entry, "<think>\n1/2 = 0.5\n</think>\n\\boxed{\\frac{1}{2}}") == 1.0
    assert reward(entry, "<think>\nhmm\n</think>\nso it is 2/4 in the end") == 1.0  # no box: last number
    assert reward(entry, "<think>\n0.5\n</think>\nthe answer is 3") == 0.0  # the thought never counts
    assert reward(entry, "<think>\n0.5 still thinking") == 0.0  # cut off mid-thought
    assert reward(_entry("math", "1,200"), "\\boxed{1200}") == 1.0
    # Configured thinking tags (chat.think_open / think_close) delimit the thought.
    assert reward(entry, "<reason>3</reason> 0.5", tags=("<reason>", "</reason>")) == 1.0
    assert reward(entry, "<reason>0.5</reason> 3", tags=("<reason>", "</reason>")) == 0.0


def test_exact_compares_the_final_answer_or_the_trimmed_text():
    entry = _entry("exact", "Paris")
    assert reward(entry, "<think>\nFrance\n</think>\n Paris \n") == 1.0
    assert reward(entry, "<think>\nFrance\n</think>\n\\boxed{Paris}") == 1.0
    assert reward(entry, "<think>\nFrance\n</think>\nparis") == 0.0
    assert final_answer("<think>x</think> 7 apples", fallback="text") == "7 apples"


def test_reasoning_gym_verifier_scores_with_the_family_dataset():
    entry = _entry("reasoning_gym:gcd", "6", dataset="gcd", dataset_kwargs={}, math=True)
    assert reward(entry, "<think>\n</think>\n\\boxed{6}") == 1.0
    assert reward(entry, "<think>\n</think>\n\\boxed{7}") == 0.0


@pytest.fixture
def user_module(tmp_path, monkeypatch):  # noqa: ANN201
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            CALLS = []

            def graded(prompt, response, answer):
                CALLS.append((prompt, response, answer))
                return 0.25 if answer in response else 0.0

            def broken(prompt, response, answer):
                raise KeyError("boom")

            def wordy(prompt, response, answer):
                return "yes"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules.get("my_rewards") or __import__("my_rewards")
    sys.modules.pop("my_rewards", None)
    load_user_function.cache_clear()


def test_a_user_function_is_called_with_prompt_response_and_answer(user_module):
    entry = _entry("my_rewards:graded", "42")
    assert reward(entry, "<think>\n</think>\nit is 42") == 0.25
    assert user_module.CALLS == [("What is half of one?", "<think>\n</think>\nit is 42", "42")]


def test_user_function_failures_name_the_set_the_function_and_the_row(user_module):
    with pytest.raises(
        RewardFunctionError, match=r"prompt set 'mine': reward function 'no_such_mod:f': cannot import"
    ):
        load_user_function("mine", "no_such_mod:f")
    with pytest.raises(
        RewardFunctionError, match=r"'my_rewards:nope': module 'my_rewards' has no function 'nope'"
    ):
        load_user_function("mine", "my_rewards:nope")
    with pytest.raises(
        RewardFunctionError,
        match=r"prompt set 'mine': reward function 'my_rewards:broken' on row /data/mine.jsonl:3 raised KeyError",
    ):
        reward(_entry("my_rewards:broken", "1"), "x")
    with pytest.raises(
        RewardFunctionError, match=r"'my_rewards:wordy' on row .* returned 'yes', expected a finite"
    ):
        reward(_entry("my_rewards:wordy", "1"), "x")
