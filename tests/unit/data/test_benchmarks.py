"""Benchmark readers: each format on a small file written here, and bad rows named by file:line."""

from __future__ import annotations

import json
import re

import pytest

from slingshot.config import BenchmarkConfig
from slingshot.data.benchmarks import BenchmarkFormatError, read_benchmark, read_prompts
from slingshot.data.corpora import write_parquet
from slingshot.data.tasks import content_hash


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _bench(path, fmt, **kw) -> BenchmarkConfig:
    return BenchmarkConfig(name="b", format=fmt, path=str(path), **kw)


def test_gsm8k_answer_is_after_the_hashes(tmp_path):
    path = _jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "Tom has 3 apples and buys 4.", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
            {"question": "A car costs...", "answer": "so 1,250 total\n#### 1,250"},
        ],
    )
    entries = read_benchmark(_bench(path, "gsm8k", instruction="Box the answer."))
    assert [e["answer"] for e in entries] == ["7", "1250"]
    first = entries[0]
    assert first["question"] == "Tom has 3 apples and buys 4.\n\nBox the answer."
    assert (first["id"], first["family"], first["benchmark"], first["math"]) == (
        "b/0",
        "bench/b",
        "gsm8k",
        True,
    )
    # hash: the question as the file has it; prompt_hash: the rendered prompt
    assert first["hash"] == content_hash("Tom has 3 apples and buys 4.")
    assert first["prompt_hash"] == content_hash(first["question"])
    assert first["source"] == f"{path}:1"


def test_math_reads_the_answer_field_else_the_last_box_of_the_solution(tmp_path):
    path = tmp_path / "math.parquet"
    write_parquet(
        path,
        [
            {"problem": "Half of one?", "solution": "It is \\boxed{\\frac{1}{2}}.", "answer": None},
            {"problem": "Sum?", "solution": "First \\boxed{3}, no: \\boxed{\\sqrt{2}}", "answer": None},
            {"problem": "MATH-500 row", "solution": "long", "answer": "\\pi"},
        ],
    )
    assert [e["answer"] for e in read_benchmark(_bench(path, "math"))] == [
        "\\frac{1}{2}",
        "\\sqrt{2}",
        "\\pi",
    ]


def test_aime_answers_are_integers_from_an_hf_dataset_on_disk(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"problem": ["p1", "p2", "p3"], "answer": ["033", "\\boxed{204}", "7"]}
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "aime"))
    with pytest.raises(BenchmarkFormatError, match=r"a DatasetDict; set split to one of \['train'\]"):
        read_benchmark(_bench(tmp_path / "aime", "aime"))
    entries = read_benchmark(_bench(tmp_path / "aime", "aime", split="train"))
    assert [e["answer"] for e in entries] == ["33", "204", "7"]
    assert entries[1]["source"] == f"{tmp_path / 'aime'} (row 1)"


def test_multiple_choice_renders_the_choices_and_keeps_the_letter(tmp_path):
    path = _jsonl(
        tmp_path / "mc.jsonl",
        [
            {"question": "Which is red?", "choices": ["sky", "blood", "grass"], "answer": 1},  # MMLU: index
            {"question": "Pick", "choices": {"label": ["1", "2"], "text": ["x", "y"]}, "answer": "2"},  # ARC
            {"question": "Q3", "choices": ["a", "b", "c", "d"], "answer": "(d)"},
        ],
    )
    entries = read_benchmark(_bench(path, "multiple_choice"))
    assert entries[0]["question"] == "Which is red?\n\nA. sky\nB. blood\nC. grass"
    assert [e["answer"] for e in entries] == ["B", "B", "D"]
    assert entries[1]["question"].endswith("A. x\nB. y") and not entries[0]["math"]
    assert entries[0]["hash"] == content_hash("Which is red?")  # the stem, for the contamination check


def test_local_file_with_declared_keys(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [{"q": f"problem {i}", "a": i} for i in range(10)])
    with pytest.raises(ValueError, match="a local benchmark needs prompt_key and answer_key"):
        _bench(path, "local")
    entries = read_benchmark(_bench(path, "local", prompt_key="q", answer_key="a"))
    assert [e["answer"] for e in entries] == [str(i) for i in range(10)]
    assert list(read_prompts(path, "q")) == [f"problem {i}" for i in range(10)]


@pytest.mark.parametrize(
    ("fmt", "bad_row", "message"),
    [
        (
            "gsm8k",
            {"question": "q", "answer": "no final answer"},
            "a GSM8K answer has its final answer after '####'; none here",
        ),
        ("gsm8k", {"question": "q"}, "missing field 'answer'"),
        ("math", {"problem": "q", "solution": "no box"}, "no 'answer' field and no \\boxed{} in 'solution'"),
        ("aime", {"problem": "q", "answer": "3/4"}, "an AIME answer is an integer, got '3/4'"),
        (
            "multiple_choice",
            {"question": "q", "choices": ["a", "b"], "answer": "C"},
            "answer 'C' is not one of the choices ['A', 'B']",
        ),
        (
            "multiple_choice",
            {"question": "q", "choices": ["a", "b"], "answer": 5},
            "answer index 5 is outside the 2 choices",
        ),
        (
            "multiple_choice",
            {"question": "q", "choices": "ab", "answer": "A"},
            "choices are str, expected a list",
        ),
        ("gsm8k", "{not json", "invalid JSON"),
        ("gsm8k", {"question": 3, "answer": "#### 1"}, "field 'question' is int, expected text"),
    ],
)
def test_a_malformed_row_is_named_by_file_and_line(tmp_path, fmt, bad_row, message):
    good = {
        "gsm8k": {"question": "q", "answer": "#### 1"},
        "math": {"problem": "q", "solution": "\\boxed{1}"},
        "aime": {"problem": "q", "answer": 1},
        "multiple_choice": {"question": "q", "choices": ["a", "b"], "answer": "A"},
    }[fmt]
    path = _jsonl(tmp_path / "bench.jsonl", [good, "", good, bad_row])  # a blank line 2 still counts
    with pytest.raises(BenchmarkFormatError, match=re.escape(f"{path}:4: {message}")):
        read_benchmark(_bench(path, fmt))
