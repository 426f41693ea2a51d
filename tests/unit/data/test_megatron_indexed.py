"""Megatron-Core indexed format: written by us, read by Megatron's own dataset classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("megatron.core")

from slingshot.data.build import build_tiny_corpora  # noqa: E402
from slingshot.data.config import DataConfig, TokenizerConfig  # noqa: E402
from slingshot.data.megatron_indexed import (  # noqa: E402
    MegatronTokenizerAdapter,
    build_gpt_datasets,
    gpt_dataset_config,
    read_indexed_dataset,
    write_indexed_dataset,
)
from slingshot.data.tasks import SplitSizes  # noqa: E402


def _docs(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, 500, size=rng.integers(3, 40)).tolist() for _ in range(n)]


def test_round_trip_through_indexed_dataset(tmp_path: Path, small_tokenizer) -> None:  # noqa: ANN001
    docs = _docs(50, 0)
    stats = write_indexed_dataset(tmp_path / "a", docs, vocab_size=len(small_tokenizer), eod_id=1)
    assert stats.documents == 50 and stats.tokens == sum(len(d) + 1 for d in docs)
    assert stats.dtype == "uint16"
    ds = read_indexed_dataset(tmp_path / "a")
    assert len(ds) == 50
    assert ds.sequence_lengths.tolist() == [len(d) + 1 for d in docs]
    assert ds.document_indices.tolist() == list(range(51))
    for i in (0, 17, 49):
        assert ds[i].tolist() == docs[i] + [1]


def test_out_of_range_token_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out of range"):
        write_indexed_dataset(tmp_path / "x", [[1, 2, 700]], vocab_size=512)


def test_gpt_and_blended_datasets_have_expected_token_counts(tmp_path: Path, small_tokenizer) -> None:  # noqa: ANN001
    tok = MegatronTokenizerAdapter(small_tokenizer)
    a = write_indexed_dataset(tmp_path / "a", _docs(60, 1), tok.vocab_size, tok.eod)
    b = write_indexed_dataset(tmp_path / "b", _docs(30, 2), tok.vocab_size, tok.eod)
    seq = 16

    cfg = gpt_dataset_config(tok, seq, seed=5, blend=([a.prefix], None), split="100,0,0")
    train, valid, test = build_gpt_datasets(cfg, [None, None, None])
    assert type(train).__name__ == "GPTDataset" and valid is None and test is None
    # One epoch of seq_len+1 windows overlapping by one token: (tokens - 1) // seq_len samples.
    assert len(train) == (a.tokens - 1) // seq
    low = read_indexed_dataset(a.prefix)  # keep it alive: its arrays are views of its mmap
    stream = np.concatenate([low[i] for i in range(a.documents)])
    covered = 0
    for i in range(len(train)):
        s = train[i]
        assert s["tokens"].shape == (seq,) and s["labels"].shape == (seq,)
        assert (s["labels"][:-1] == s["tokens"][1:]).all()
        covered += int(s["tokens"].numel())
        # Positions restart after each end-of-document token (reset_position_ids).
        eod = (s["tokens"] == tok.eod).nonzero().flatten().tolist()
        for p in eod:
            if p + 1 < seq:
                assert int(s["position_ids"][p + 1]) == 0
    assert covered == len(train) * seq <= len(stream)

    blend = gpt_dataset_config(tok, seq, seed=5, blend=([a.prefix, b.prefix], [0.7, 0.3]), split="100,0,0")
    train, _, _ = build_gpt_datasets(blend, [40, 0, 0])
    assert type(train).__name__ == "BlendedDataset" and len(train) == 40
    picked = np.bincount(train.dataset_index, minlength=2)
    assert picked.tolist() == [28, 12]
    assert all(train[i]["tokens"].shape == (seq,) for i in range(len(train)))


def test_build_tiny_corpora_end_to_end(tmp_path: Path) -> None:
    cfg = DataConfig(
        families=["gcd", "countdown", "letter_counting"],
        splits=SplitSizes(train=30, validation=3, test=5),
        general_docs=150,
        tokenizer=TokenizerConfig(vocab_size=400),
    )
    m = build_tiny_corpora(cfg, tmp_path)
    json.dumps(m)  # manifest-ready
    assert m["tasks"]["train"]["records"] == 90 and m["tasks"]["test"]["records"] == 15
    assert m["corpora"]["general"]["records"] == 150 and m["corpora"]["reasoning"]["records"] == 90
    for name in ("general", "reasoning"):
        ds = read_indexed_dataset(tmp_path / "indexed" / name)
        assert int(ds.sequence_lengths.sum()) == m["tokens"][name] > 0
        assert len(ds) == m["corpora"][name]["records"]
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    again = build_tiny_corpora(cfg, tmp_path / "again")
    assert again["indexed"]["reasoning"]["bin_sha256"] == m["indexed"]["reasoning"]["bin_sha256"]
