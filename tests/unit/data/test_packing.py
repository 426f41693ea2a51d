"""Packing: pretraining sequences with document boundaries, SFT response-only masks."""

from __future__ import annotations

import numpy as np
import pytest

from slingshot.data.packing import (
    IGNORE_INDEX,
    SFTExample,
    block_causal_mask,
    pack_pretraining,
    pack_sft,
    pad_sft,
    tokenize_documents,
    tokenize_sft,
)


def test_pretraining_pack_hand_checked() -> None:
    docs = [[11, 12, 13], [21, 22], [31, 32, 33, 34]]
    seqs = list(pack_pretraining(docs, seq_len=4, eos_id=0))
    # stream: 11 12 13 0 | 21 22 0 31 | 32 33 34 0
    assert [s.input_ids.tolist() for s in seqs] == [[11, 12, 13, 0], [21, 22, 0, 31], [32, 33, 34, 0]]
    assert [s.position_ids.tolist() for s in seqs] == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]]
    assert [s.doc_ids.tolist() for s in seqs] == [[0, 0, 0, 0], [1, 1, 1, 2], [2, 2, 2, 2]]
    assert [s.cu_seqlens.tolist() for s in seqs] == [[0, 4], [0, 3, 4], [0, 4]]


def test_pretraining_pack_tail() -> None:
    docs = [[5, 6, 7], [8]]
    assert len(list(pack_pretraining(docs, seq_len=4, eos_id=1))) == 1  # tail [8, 1] dropped
    seqs = list(pack_pretraining(docs, seq_len=4, eos_id=1, drop_last=False, pad_id=9))
    assert seqs[1].input_ids.tolist() == [8, 1, 9, 9]
    assert seqs[1].doc_ids.tolist() == [1, 1, -1, -1]
    assert seqs[1].cu_seqlens.tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="pad_id"):
        list(pack_pretraining(docs, seq_len=4, eos_id=1, drop_last=False))


def test_pretraining_pack_keeps_every_token(small_tokenizer) -> None:  # noqa: ANN001
    texts = [f"document number {i} has {'words ' * (i % 7)}" for i in range(100)]
    docs = tokenize_documents(small_tokenizer, texts, batch_size=16)
    assert docs == [small_tokenizer.encode(t, add_special_tokens=False) for t in texts]
    seqs = list(pack_pretraining(docs, seq_len=32, eos_id=1))
    flat = np.concatenate([s.input_ids for s in seqs])
    stream = np.concatenate([np.array(d + [1]) for d in docs])
    assert len(flat) == (len(stream) // 32) * 32
    assert (flat == stream[: len(flat)]).all()


def test_sft_mask_hand_checked(small_tokenizer) -> None:  # noqa: ANN001
    tok = small_tokenizer
    ex = tokenize_sft(tok, "What is 2+3?", "\\boxed{5}", reasoning="2 + 3 = 5", example_id="e0")
    prompt = "<|user|>\nWhat is 2+3?\n<|assistant|>\n"
    response = "<think>\n2 + 3 = 5\n</think>\n\\boxed{5}<|endoftext|>"
    n_prompt = len(tok.encode(prompt, add_special_tokens=False))
    assert ex.input_ids == tok.encode(prompt + response, add_special_tokens=False)
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert tok.decode(ex.input_ids[:n_prompt]) == prompt
    assert tok.decode([t for t in ex.labels if t != IGNORE_INDEX]) == response
    # The first supervised token is <think>, the last one the end of turn.
    assert ex.labels[n_prompt] == tok.convert_tokens_to_ids("<think>")
    assert ex.labels[-1] == tok.eos_token_id
    trunc = tokenize_sft(tok, "What is 2+3?", "\\boxed{5}", reasoning="2 + 3 = 5", max_length=n_prompt + 2)
    assert trunc.truncated and len(trunc.input_ids) == n_prompt + 2 and trunc.n_supervised == 2


def _ex(i: int, n_prompt: int, n_resp: int) -> SFTExample:
    ids = [100 + i] * (n_prompt + n_resp)
    return SFTExample(f"e{i}", ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:])


def test_pack_sft_hand_checked() -> None:
    rows = pack_sft([_ex(0, 2, 2), _ex(1, 1, 2), _ex(2, 3, 3), _ex(3, 1, 1)], seq_len=8, pad_id=0)
    # first fit: row0 = e0 (4) + e1 (3) = 7; e2 (6) opens row1; e3 (2) fills row1 to 8.
    assert [r.example_ids for r in rows] == [["e0", "e1"], ["e2", "e3"]]
    r0 = rows[0]
    assert r0.input_ids == [100, 100, 100, 100, 101, 101, 101, 0]
    assert r0.labels == [-100, -100, 100, 100, -100, 101, 101, -100]
    assert r0.position_ids == [0, 1, 2, 3, 0, 1, 2, 0]
    assert r0.attention_mask == [1, 1, 1, 1, 1, 1, 1, 0]
    assert r0.cu_seqlens == [0, 4, 7]
    assert rows[1].position_ids == [0, 1, 2, 3, 4, 5, 0, 1]
    mask = block_causal_mask(r0.cu_seqlens, 8)
    assert mask[5, 4] and not mask[5, 3] and not mask[3, 4] and mask[7, 7] and not mask[7, 6]
    assert mask.sum(axis=1).min() >= 1


def test_pack_sft_rejects_overlong_and_unsupervised() -> None:
    with pytest.raises(ValueError, match="tokens > seq_len"):
        pack_sft([_ex(0, 5, 5)], seq_len=8, pad_id=0)
    with pytest.raises(ValueError, match="no supervised"):
        pack_sft([_ex(0, 3, 0)], seq_len=8, pad_id=0)


def test_pad_sft_fallback() -> None:
    rows = pad_sft([_ex(0, 2, 2), _ex(1, 1, 2)], seq_len=5, pad_id=0)
    assert [r.input_ids for r in rows] == [[100] * 4 + [0], [101] * 3 + [0, 0]]
    assert rows[1].labels == [-100, 101, 101, -100, -100]
    assert rows[1].attention_mask == [1, 1, 1, 0, 0]


def test_pretraining_pack_independent_of_flush_size() -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 50, size=rng.integers(1, 30)).tolist() for _ in range(200)]
    ref = list(pack_pretraining(docs, seq_len=16, eos_id=1, drop_last=False, pad_id=0, flush_sequences=1000))
    for flush in (1, 3, 7):
        got = list(
            pack_pretraining(docs, seq_len=16, eos_id=1, drop_last=False, pad_id=0, flush_sequences=flush)
        )
        assert len(got) == len(ref)
        for a, b in zip(got, ref, strict=True):
            for field in ("input_ids", "position_ids", "doc_ids", "cu_seqlens"):
                assert (getattr(a, field) == getattr(b, field)).all()
