"""Rewards: answer extraction and verifiers (reasoning-gym scorers, math-verify)."""

from slingshot.rewards.extract import Extraction, answer_region, extract, extract_answer, last_boxed, parse_ok
from slingshot.rewards.verify import is_correct, math_equal, score, score_answer

__all__ = [
    "Extraction",
    "answer_region",
    "extract",
    "extract_answer",
    "is_correct",
    "last_boxed",
    "math_equal",
    "parse_ok",
    "score",
    "score_answer",
]
