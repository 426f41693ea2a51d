"""The data stage's build: tokenizing in worker processes writes the same bytes as in one
process; Megatron indexed corpora are taken as they are, or refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")

from slingshot.data.build import build_tiny_corpora  # noqa: E402
from slingshot.data.config import DataConfig, TokenizerConfig  # noqa: E402
from slingshot.data.corpora import CorpusFormatError, write_jsonl, write_parquet  # noqa: E402
from slingshot.data.megatron_indexed import (  # noqa: E402
    check_indexed_corpus,
    read_indexed_dataset,
    write_indexed_dataset,
)
from slingshot.data.tasks import SplitSizes  # noqa: E402


def _config(tmp_path: Path, extra: list[dict]) -> DataConfig:
    return DataConfig(
        families=["gcd", "chain_sum"],
        splits=SplitSizes(train=20, validation=2, test=2),
        general_docs=300,
        tokenizer=TokenizerConfig(vocab_size=400),
        extra_corpora=extra,
    )


def _user_corpora(tmp_path: Path) -> list[dict]:
    write_jsonl(
        tmp_path / "notes.jsonl",
        [{"body": f"note {i}: " + "gcd of 12 and 18 " * (i % 5)} for i in range(900)],
    )
    write_parquet(tmp_path / "pages.parquet", [{"text": f"page {i} " * (i % 9)} for i in range(300)])
    return [
        {"name": "notes", "path": str(tmp_path / "notes.jsonl"), "fields": {"text": "body"}},
        {"name": "pages", "path": str(tmp_path / "pages.parquet")},
    ]


def test_parallel_tokenization_writes_the_serial_bytes(tmp_path: Path) -> None:
    cfg = _config(tmp_path, _user_corpora(tmp_path))
    serial = build_tiny_corpora(cfg, tmp_path / "serial", workers=1)
    parallel = build_tiny_corpora(cfg, tmp_path / "parallel", workers=2)
    assert set(serial["indexed"]) == {"general", "reasoning", "notes", "pages"}
    for name, stats in serial["indexed"].items():
        other = parallel["indexed"][name]
        assert (other["bin_sha256"], other["idx_sha256"]) == (stats["bin_sha256"], stats["idx_sha256"])
        assert other["documents"] == stats["documents"] and other["tokens"] == stats["tokens"] > 0
    # Every note is one eod-terminated document.
    notes = read_indexed_dataset(tmp_path / "parallel" / "indexed" / "notes")
    assert len(notes) == 900 and int(notes[899][-1]) == serial["tokenizer"]["eos_token_id"]


def test_a_malformed_line_fails_in_a_worker_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": 3}\n')
    cfg = _config(tmp_path, [{"name": "bad", "path": str(bad)}])
    with pytest.raises(CorpusFormatError, match=rf"{bad}:3 \(line 3\): field 'text' is int"):
        build_tiny_corpora(cfg, tmp_path / "out", workers=2)


def test_megatron_corpus_is_taken_as_it_is(tmp_path: Path) -> None:
    docs = [[5, 6, 7], [8, 9], [10]]
    given = write_indexed_dataset(tmp_path / "given", docs, vocab_size=400, eod_id=1)
    cfg = _config(tmp_path, [{"name": "given", "path": str(tmp_path / "given"), "format": "megatron"}])
    built = build_tiny_corpora(cfg, tmp_path / "out", workers=1)
    stats = built["indexed"]["given"]
    assert stats == given.model_dump()  # same prefix, counts and digests: not rewritten
    assert (stats["documents"], stats["tokens"], stats["dtype"]) == (3, 9, "uint16")
    assert not (tmp_path / "out" / "indexed" / "given.bin").exists()
    json.dumps(built)


def test_megatron_corpus_of_another_tokenizer_is_refused(tmp_path: Path) -> None:
    write_indexed_dataset(tmp_path / "other", [[5, 999]], vocab_size=1000)  # ids past the ~400 of ours
    cfg = _config(tmp_path, [{"name": "other", "path": str(tmp_path / "other"), "format": "megatron"}])
    with pytest.raises(
        ValueError, match=rf"data.extra_corpora 'other': '{tmp_path}/other' holds token id 999, but"
    ):
        build_tiny_corpora(cfg, tmp_path / "out", workers=1)
    with pytest.raises(ValueError, match="stores uint16 tokens, too narrow for the tokenizer's 70000 ids"):
        check_indexed_corpus(tmp_path / "other", 70000, "data.extra_corpora 'other'")


def test_megatron_corpus_missing_files_are_named(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [{"name": "gone", "path": str(tmp_path / "gone"), "format": "megatron"}])
    with pytest.raises(
        ValueError, match=r"'gone': '.*gone\.bin' does not exist \(path is the \.bin/\.idx prefix\)"
    ):
        build_tiny_corpora(cfg, tmp_path / "out", workers=1)
