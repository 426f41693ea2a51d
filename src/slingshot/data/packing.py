"""Tokenization and packing: pretraining sequences and SFT examples.

Conventions (shared with the training stages):
- ``labels`` are aligned with ``input_ids`` (the HF convention: the model shifts them);
  -100 marks a position that carries no loss (prompt, padding).
- Packed sequences restart ``position_ids`` at 0 at every document / example start (the
  layout of Megatron's ``reset_position_ids=True``), and carry ``cu_seqlens`` (segment
  start offsets plus the total length) so attention can be kept within a segment
  (flash-attn varlen, or :func:`block_causal_mask`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def tokenize_documents(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 1024
) -> list[list[int]]:
    """Batch-encode documents with the fast (Rust) tokenizer; no special tokens added.

    Calls the backend's ``encode_batch`` directly: the per-call Python overhead of
    ``tokenizer(...)``/``BatchEncoding`` dominates for short documents.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    out: list[list[int]] = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i : i + batch_size])
        if backend is not None:
            out.extend(e.ids for e in backend.encode_batch(chunk, add_special_tokens=False))
        else:
            out.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return out


# --------------------------------------------------------------------------- pretraining


@dataclass(frozen=True)
class PackedSequence:
    input_ids: np.ndarray  # [seq_len] int64
    position_ids: np.ndarray  # [seq_len], 0 at each document start
    doc_ids: np.ndarray  # [seq_len], index of the source document of each token
    cu_seqlens: np.ndarray  # segment starts within the sequence, then seq_len


def _segments(docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of doc ids [rows, seq_len]: segment start mask and position ids."""
    starts = np.ones(docs.shape, dtype=bool)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]  # a segment begins where the document changes
    idx = np.broadcast_to(np.arange(docs.shape[1]), docs.shape)
    seg_start = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    return starts, idx - seg_start


def pack_pretraining(
    docs: Iterable[Sequence[int]],
    seq_len: int,
    eos_id: int,
    drop_last: bool = True,
    pad_id: int | None = None,
    flush_sequences: int = 64,
) -> Iterator[PackedSequence]:
    """Concatenate documents, each followed by ``eos_id``, and cut fixed-length sequences.

    A document may span two sequences (no token is wasted); the tail shorter than
    ``seq_len`` is dropped, or padded with ``pad_id`` (doc id -1) when ``drop_last=False``.
    Tokens are gathered in a Python list and converted to numpy once per
    ``flush_sequences`` sequences: per-document numpy calls cost more than the packing.
    """
    carry_tok = np.zeros(0, dtype=np.int64)
    carry_doc = np.zeros(0, dtype=np.int64)
    buf: list[int] = []
    lens: list[int] = []
    first_doc = 0

    def rows(tokens: np.ndarray, doc_ids: np.ndarray) -> Iterator[PackedSequence]:
        t2, d2 = tokens.reshape(-1, seq_len), doc_ids.reshape(-1, seq_len)
        starts, pos = _segments(d2)
        for r in range(t2.shape[0]):
            cu = np.append(np.flatnonzero(starts[r]), seq_len)
            yield PackedSequence(t2[r], pos[r], d2[r], cu)

    def flush() -> tuple[np.ndarray, np.ndarray]:
        tok = np.concatenate([carry_tok, np.asarray(buf, dtype=np.int64)])
        doc = np.concatenate([carry_doc, np.repeat(np.arange(first_doc, first_doc + len(lens)), lens)])
        return tok, doc

    for d, doc in enumerate(docs):
        buf.extend(doc)
        buf.append(eos_id)
        lens.append(len(doc) + 1)
        if len(buf) + len(carry_tok) >= seq_len * flush_sequences:
            tok, doc_ids = flush()
            n = (len(tok) // seq_len) * seq_len
            yield from rows(tok[:n], doc_ids[:n])
            carry_tok, carry_doc = tok[n:], doc_ids[n:]
            buf, lens, first_doc = [], [], d + 1
    tok, doc_ids = flush()
    n = (len(tok) // seq_len) * seq_len
    yield from rows(tok[:n], doc_ids[:n])
    if len(tok) > n and not drop_last:
        if pad_id is None:
            raise ValueError("pad_id is required when drop_last=False")
        pad = seq_len - (len(tok) - n)
        yield from rows(
            np.concatenate([tok[n:], np.full(pad, pad_id, dtype=np.int64)]),
            np.concatenate([doc_ids[n:], np.full(pad, -1, dtype=np.int64)]),
        )


# --------------------------------------------------------------------------- SFT


@dataclass(frozen=True)
class SFTExample:
    id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt
    truncated: bool = False

    @property
    def n_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def sft_messages(
    prompt: str, response: str, reasoning: str | None = None, system: str | None = None
) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    assistant = {"role": "assistant", "content": response}
    if reasoning is not None:
        assistant["reasoning_content"] = reasoning
    msgs.append(assistant)
    return msgs


def tokenize_sft(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    reasoning: str | None = None,
    system: str | None = None,
    max_length: int | None = None,
    example_id: str = "",
) -> SFTExample:
    """Chat-template one example; loss only on the assistant turn.

    The prompt/response split is found by character offsets in the rendered text, not
    by tokenizing the two halves separately (BPE merges across the seam would shift it).
    """
    msgs = sft_messages(prompt, response, reasoning, system)
    prompt_text = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("chat template: the rendered prompt is not a prefix of the rendered conversation")
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    cut = len(prompt_text)
    labels = [
        IGNORE_INDEX if start < cut else tok
        for tok, (start, _end) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return SFTExample(example_id, ids, labels, truncated)


@dataclass
class PackedSFT:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    attention_mask: list[int] = field(default_factory=list)  # 1 real token, 0 padding
    cu_seqlens: list[int] = field(default_factory=lambda: [0])
    example_ids: list[str] = field(default_factory=list)

    @property
    def used(self) -> int:
        return self.cu_seqlens[-1]

    def add(self, ex: SFTExample) -> None:
        self.input_ids += ex.input_ids
        self.labels += ex.labels
        self.position_ids += list(range(len(ex.input_ids)))
        self.attention_mask += [1] * len(ex.input_ids)
        self.cu_seqlens.append(self.used + len(ex.input_ids))
        self.example_ids.append(ex.id)

    def pad_to(self, seq_len: int, pad_id: int) -> None:
        n = seq_len - len(self.input_ids)
        self.input_ids += [pad_id] * n
        self.labels += [IGNORE_INDEX] * n
        self.position_ids += list(range(n))
        self.attention_mask += [0] * n


def pack_sft(
    examples: Iterable[SFTExample], seq_len: int, pad_id: int, lookback: int = 64
) -> list[PackedSFT]:
    """First-fit packing of whole examples into ``seq_len`` rows, in a deterministic order.

    Examples are never split (a split answer would lose its prompt). An example longer
    than ``seq_len`` or with no supervised token is rejected: truncate it upstream with
    ``tokenize_sft(max_length=...)`` so the caller decides. Only the last ``lookback``
    open rows are searched, so packing streams in O(n).
    """
    rows: list[PackedSFT] = []
    for ex in examples:
        if len(ex.input_ids) > seq_len:
            raise ValueError(f"SFT example {ex.id!r} has {len(ex.input_ids)} tokens > seq_len {seq_len}")
        if ex.n_supervised == 0:
            raise ValueError(f"SFT example {ex.id!r} has no supervised tokens")
        for row in rows[-lookback:]:
            if row.used + len(ex.input_ids) <= seq_len:
                row.add(ex)
                break
        else:
            row = PackedSFT()
            row.add(ex)
            rows.append(row)
    for row in rows:
        row.pad_to(seq_len, pad_id)
    return rows


def pad_sft(examples: Iterable[SFTExample], seq_len: int, pad_id: int) -> list[PackedSFT]:
    """Padding fallback (one example per row) for attention kernels that cannot pack."""
    rows = []
    for ex in examples:
        if len(ex.input_ids) > seq_len:
            raise ValueError(f"SFT example {ex.id!r} has {len(ex.input_ids)} tokens > seq_len {seq_len}")
        row = PackedSFT()
        row.add(ex)
        row.pad_to(seq_len, pad_id)
        rows.append(row)
    return rows


def block_causal_mask(cu_seqlens: Sequence[int], seq_len: int) -> np.ndarray:
    """[seq_len, seq_len] bool, True where attention is allowed: causal within a segment.

    Positions past ``cu_seqlens[-1]`` (padding) attend only to themselves, so no row is
    empty (an all-masked softmax row gives NaN).
    """
    seg = np.full(seq_len, -1, dtype=np.int64)
    for i in range(len(cu_seqlens) - 1):
        seg[cu_seqlens[i] : cu_seqlens[i + 1]] = i
    pad = np.flatnonzero(seg < 0)
    seg[pad] = len(cu_seqlens) + np.arange(len(pad))
    causal = np.tril(np.ones((seq_len, seq_len), dtype=bool))
    return causal & (seg[:, None] == seg[None, :])
