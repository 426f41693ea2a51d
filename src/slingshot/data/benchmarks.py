"""Benchmark readers: GSM8K, MATH/MATH-500, AIME, multiple choice, any local prompt/answer file.

Each reader turns the rows of a local JSONL/Parquet/HF-on-disk file into evaluation
entries, the shape :mod:`slingshot.evaluation` prompts and judges::

    id, family ("bench/<name>"), benchmark (the format), question (the prompt), answer,
    math (graded by math-verify; False for letters), hash, prompt_hash, source (file:line)

The gold answer is read the way each benchmark publishes it:

- ``gsm8k``: the text after ``####`` in the answer (thousands separators dropped);
- ``math``: the ``answer`` field when the row has one (MATH-500), else the last
  ``\\boxed{}`` of the solution (MATH);
- ``aime``: an integer (``"033"``, ``33`` and ``"\\boxed{33}"`` all read as ``33``);
- ``multiple_choice``: a letter, or a 0-based index into the choices, which are rendered
  into the prompt as ``A. ...`` lines (a list, or ``{"label": [...], "text": [...]}``);
- ``local``: the configured prompt and answer keys, graded by math-verify.

A row that does not fit (a missing key, no ``####``, no box, a non-integer AIME answer, a
letter outside the choices) stops the read naming the file and line (JSONL) or row
(Parquet/HF): a skipped row would silently change the benchmark. ``hash`` is the content
hash of the question as the file has it, ``prompt_hash`` that of the rendered prompt; the
evaluation compares both with its training data (:func:`slingshot.evaluation.check_benchmarks_held_out`).
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterator
from typing import Any

from slingshot.config import BenchmarkConfig
from slingshot.data.corpora import CorpusFormatError, detect_format
from slingshot.data.tasks import content_hash
from slingshot.rewards.extract import last_boxed

LETTERS = string.ascii_uppercase
_INTEGER = re.compile(r"^[+-]?\d+$")


class BenchmarkFormatError(CorpusFormatError):
    """A benchmark row the reader cannot turn into a prompt and a gold answer."""


def iter_rows(
    path: str | os.PathLike[str], file_format: str = "auto", split: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) of every row of a JSONL/Parquet/HF-on-disk file; ``where`` is ``file:line``
    or ``file (row N)``. Rows are raw dicts: benchmark fields are not all strings."""
    fmt = detect_format(path) if file_format == "auto" else file_format
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{lineno}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise BenchmarkFormatError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield f"{path} (row {row})", record
                row += 1
    else:
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split is None or split not in ds:
                raise BenchmarkFormatError(f"{path}: a DatasetDict; set split to one of {sorted(ds)}")
            ds = ds[split]
        for row, record in enumerate(ds):
            yield f"{path} (row {row})", record


def _field(row: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(row, dict):
        raise BenchmarkFormatError(f"{where}: row is {type(row).__name__}, expected an object")
    if row.get(key) is None or (isinstance(row[key], str) and not row[key].strip()):
        raise BenchmarkFormatError(f"{where}: missing field {key!r}; the row has {sorted(row)}")
    return row[key]


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = _field(row, key, where)
    if not isinstance(value, str):
        raise BenchmarkFormatError(f"{where}: field {key!r} is {type(value).__name__}, expected text")
    return value


def gsm8k_answer(solution: str, where: str) -> str:
    if "####" not in solution:
        raise BenchmarkFormatError(f"{where}: a GSM8K answer has its final answer after '####'; none here")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise BenchmarkFormatError(f"{where}: nothing after '####'")
    return final


def math_answer(row: dict[str, Any], answer_key: str, solution_key: str, where: str) -> str:
    if row.get(answer_key) not in (None, ""):
        return str(row[answer_key]).strip()
    boxed = last_boxed(_text(row, solution_key, where))
    if not boxed:
        raise BenchmarkFormatError(f"{where}: no {answer_key!r} field and no \\boxed{{}} in {solution_key!r}")
    return boxed


def aime_answer(value: Any, where: str) -> str:
    text = str(value).strip()
    text = last_boxed(text) or text
    if isinstance(value, bool) or not _INTEGER.match(text):
        raise BenchmarkFormatError(f"{where}: an AIME answer is an integer, got {value!r}")
    return str(int(text))


def choice_list(value: Any, where: str) -> tuple[list[str], list[str]]:
    """(labels, texts) of a multiple-choice row's options."""
    if isinstance(value, dict) and "text" in value:
        texts = [str(t) for t in value["text"]]
        labels = [str(x).strip().upper() for x in value.get("label", LETTERS[: len(texts)])]
    elif isinstance(value, list | tuple):
        texts = [str(t) for t in value]
        labels = list(LETTERS[: len(texts)])
    else:
        raise BenchmarkFormatError(f"{where}: choices are {type(value).__name__}, expected a list")
    if not 2 <= len(texts) <= len(LETTERS) or len(labels) != len(texts):
        raise BenchmarkFormatError(f"{where}: expected 2 to 26 labelled choices, got {len(texts)}")
    return labels, texts


def choice_answer(value: Any, labels: list[str], where: str) -> str:
    """The gold letter from a letter or a 0-based index."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(labels):
            raise BenchmarkFormatError(f"{where}: answer index {value} is outside the {len(labels)} choices")
        return LETTERS[value]
    letter = str(value).strip().strip("()").upper()
    if letter not in labels:
        raise BenchmarkFormatError(f"{where}: answer {value!r} is not one of the choices {labels}")
    return LETTERS[labels.index(letter)]


def _entry(spec: BenchmarkConfig, where: str, index: int, question: str, prompt: str, answer: str) -> dict:
    if spec.instruction:
        prompt = f"{prompt}\n\n{spec.instruction}"
    return {
        "id": f"{spec.name}/{index}",
        "family": f"bench/{spec.name}",
        "benchmark": spec.format,
        "question": prompt,
        "answer": answer,
        "math": spec.format != "multiple_choice",
        "hash": content_hash(question),
        "prompt_hash": content_hash(prompt),
        "source": where,
    }


def read_row(spec: BenchmarkConfig, where: str, index: int, row: dict[str, Any]) -> dict:
    """One evaluation entry from one row (BenchmarkFormatError naming ``where`` if it does not fit)."""
    prompt_key, answer_key = spec.keys
    question = _text(row, prompt_key, where)
    if spec.format == "gsm8k":
        answer = gsm8k_answer(_text(row, answer_key, where), where)
    elif spec.format == "math":
        answer = math_answer(row, answer_key, spec.solution_key, where)
    elif spec.format == "aime":
        answer = aime_answer(_field(row, answer_key, where), where)
    elif spec.format == "multiple_choice":
        labels, texts = choice_list(_field(row, spec.choices_key, where), where)
        answer = choice_answer(_field(row, answer_key, where), labels, where)
        options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(texts))
        return _entry(spec, where, index, question, f"{question}\n\n{options}", answer)
    else:
        answer = str(_field(row, answer_key, where)).strip()
    return _entry(spec, where, index, question, question, answer)


def read_benchmark(spec: BenchmarkConfig) -> list[dict]:
    """Every row of the benchmark as an evaluation entry, in file order."""
    entries = [
        read_row(spec, where, i, row)
        for i, (where, row) in enumerate(iter_rows(spec.path, spec.file_format, spec.split))
    ]
    if not entries:
        raise BenchmarkFormatError(f"{spec.path}: benchmark {spec.name!r} has no rows")
    return entries


def read_prompts(
    path: str | os.PathLike[str], key: str, file_format: str = "auto", split: str | None = None
) -> Iterator[str]:
    """The ``key`` text of every row: a training source's prompts, for the contamination check."""
    for where, row in iter_rows(path, file_format, split):
        yield _text(row, key, where)
