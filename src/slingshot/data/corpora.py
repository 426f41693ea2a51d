"""Corpus readers (JSONL, Parquet, HF ``save_to_disk``) and writers.

A ``format: megatron`` corpus is an already tokenized Megatron indexed dataset (``path``
is the ``.bin``/``.idx`` prefix): the data stage takes it as it is
(``megatron_indexed.check_indexed_corpus``); it has no text to read here.

Every reader streams: JSONL line by line, Parquet one record batch at a time (never
the whole file), HF datasets through Arrow's memory map. A record is normalised to
``{"id", "text"}`` or ``{"id", "prompt", "response"}`` by a declared field mapping, so
the rest of the pipeline never guesses column names. A malformed record stops the
read with the file, the line (JSONL) or row (Parquet/HF) and the field at fault: a
silently skipped record would shift every downstream sample.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from slingshot.io import atomic_path, sha256_file

Format = Literal["auto", "jsonl", "parquet", "hf_disk", "megatron"]


class CorpusFormatError(ValueError):
    """A record that does not match the declared field mapping (or is not parseable)."""


class FieldMap(BaseModel):
    """Which source fields hold the text: ``text`` alone, or ``prompt`` + ``response``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str | None = None  # defaults to "text" when no prompt/response are declared
    prompt: str | None = None
    response: str | None = None
    id: str | None = None  # default id: "<corpus name>:<line or row>"
    scalars: bool = False  # numbers in the declared fields are read as their text (answers like 42)

    @model_validator(mode="after")
    def _one_layout(self) -> FieldMap:
        if (self.prompt is None) != (self.response is None):
            raise ValueError("prompt and response fields must be declared together")
        if self.text is None and self.prompt is None:
            object.__setattr__(self, "text", "text")  # frozen model: set the default once, here
        if self.text is not None and self.prompt is not None:
            raise ValueError("declare either a text field or prompt/response fields, not both")
        return self

    @property
    def required(self) -> list[str]:
        names = [self.text] if self.text is not None else [self.prompt, self.response]
        return [n for n in names if n is not None] + ([self.id] if self.id else [])


class CorpusSpec(BaseModel):
    """One corpus on disk."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    format: Format = "auto"
    fields: FieldMap = FieldMap()
    split: str | None = None  # for an HF DatasetDict saved to disk


def detect_format(path: str | os.PathLike[str]) -> Format:
    p = Path(path)
    if p.is_dir():
        return "hf_disk"
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if p.suffix in (".parquet", ".pq"):
        return "parquet"
    raise CorpusFormatError(f"{path}: cannot tell the corpus format from the name; set format explicitly")


def _normalise(raw: Any, fields: FieldMap, where: str, default_id: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise CorpusFormatError(f"{where}: record is {type(raw).__name__}, expected an object")
    if fields.scalars:
        raw = {
            k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for k, v in raw.items()
        }
    out: dict[str, str] = {}
    for field in fields.required:
        if field not in raw or raw[field] is None:
            raise CorpusFormatError(f"{where}: missing field {field!r}")
        if field != fields.id and not isinstance(raw[field], str):
            raise CorpusFormatError(f"{where}: field {field!r} is {type(raw[field]).__name__}, expected str")
    out["id"] = str(raw[fields.id]) if fields.id else default_id
    if fields.text is not None:
        out["text"] = raw[fields.text]
    else:
        out["prompt"] = raw[fields.prompt]
        out["response"] = raw[fields.response]
    return out


def _jsonl_lines(spec: CorpusSpec) -> Iterator[tuple[int, str]]:
    """(line number, line) of every non-blank line."""
    with open(spec.path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                yield lineno, line


def _jsonl_record(spec: CorpusSpec, lineno: int, line: str) -> dict[str, str]:
    where = f"{spec.path}:{lineno}"
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusFormatError(f"{where}: invalid JSON ({exc.msg})") from None
    return _normalise(raw, spec.fields, f"{where} (line {lineno})", f"{spec.name}:{lineno}")


def _read_jsonl(spec: CorpusSpec) -> Iterator[dict[str, str]]:
    for lineno, line in _jsonl_lines(spec):
        yield _jsonl_record(spec, lineno, line)


def _read_parquet(spec: CorpusSpec, batch_size: int) -> Iterator[dict[str, str]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(spec.path)
    present = set(pf.schema_arrow.names)
    for field in spec.fields.required:
        if field not in present:
            raise CorpusFormatError(
                f"{spec.path} (row 0): missing field {field!r}; columns are {sorted(present)}"
            )
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=spec.fields.required):
        for raw in batch.to_pylist():
            yield _normalise(raw, spec.fields, f"{spec.path} (row {row})", f"{spec.name}:{row}")
            row += 1


def _read_hf_disk(spec: CorpusSpec) -> Iterator[dict[str, str]]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(spec.path)
    if isinstance(ds, DatasetDict):
        if spec.split is None or spec.split not in ds:
            raise CorpusFormatError(f"{spec.path}: a DatasetDict; set split to one of {sorted(ds)}")
        ds = ds[spec.split]
    for field in spec.fields.required:
        if field not in ds.column_names:
            raise CorpusFormatError(
                f"{spec.path} (row 0): missing field {field!r}; columns are {ds.column_names}"
            )
    for row, raw in enumerate(ds.select_columns(spec.fields.required)):
        yield _normalise(raw, spec.fields, f"{spec.path} (row {row})", f"{spec.name}:{row}")


def read_corpus(spec: CorpusSpec, batch_size: int = 1024) -> Iterator[dict[str, str]]:
    """Stream the normalised records of one corpus."""
    fmt = detect_format(spec.path) if spec.format == "auto" else spec.format
    if fmt == "megatron":
        raise CorpusFormatError(
            f"corpus {spec.name!r} ({spec.path}) is a tokenized Megatron dataset: it has no text to read"
        )
    if fmt == "jsonl":
        return _read_jsonl(spec)
    if fmt == "parquet":
        return _read_parquet(spec, batch_size)
    return _read_hf_disk(spec)


def record_text(record: dict[str, str]) -> str:
    """Plain text of a record, for pretraining and tokenizer training."""
    if "text" in record:
        return record["text"]
    return f"{record['prompt']}\n{record['response']}"


# A corpus in pieces for tokenizing in worker processes: ("jsonl", (spec, [(line number, line)]))
# — parsing JSON is most of the reading, so the workers do it — or ("texts", [text]).
TextChunk = tuple[str, Any]


def text_chunks(spec: CorpusSpec, chunk_records: int = 1024) -> Iterator[TextChunk]:
    """The corpus's records in order, ``chunk_records`` at a time (see :func:`chunk_texts`)."""
    fmt = detect_format(spec.path) if spec.format == "auto" else spec.format
    if fmt == "jsonl":
        lines = _jsonl_lines(spec)
        while chunk := list(itertools.islice(lines, chunk_records)):
            yield "jsonl", (spec, chunk)
        return
    records = read_corpus(spec, batch_size=chunk_records)
    while texts := [record_text(r) for r in itertools.islice(records, chunk_records)]:
        yield "texts", texts


def chunk_texts(chunk: TextChunk) -> list[str]:
    """The plain texts of one chunk, in order (a malformed JSONL line fails naming file:line)."""
    kind, payload = chunk
    if kind == "texts":
        return payload
    spec, lines = payload
    return [record_text(_jsonl_record(spec, lineno, line)) for lineno, line in lines]


# --------------------------------------------------------------------------- writers


class WriteStats(BaseModel):
    path: str
    records: int
    sha256: str


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> WriteStats:
    """Stream records to JSONL atomically (no half-written corpus is ever visible)."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for rec in records:
            handle.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return WriteStats(path=str(path), records=n, sha256=sha256_file(path))


def write_parquet(
    path: str | os.PathLike[str], records: Iterable[dict[str, Any]], row_group_size: int = 1024
) -> WriteStats:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(records)
    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    return WriteStats(path=str(path), records=len(rows), sha256=sha256_file(path))
