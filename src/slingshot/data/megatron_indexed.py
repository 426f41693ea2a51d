"""Megatron-Core indexed datasets (.bin/.idx) and GPT dataset construction on CPU.

Written with ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`` (the
format Megatron's ``preprocess_data.py`` writes), one document per sequence, each
document ending with the tokenizer's end-of-document id. Token dtype is Megatron's own
choice for the vocabulary (uint16 below 65 500 ids, else int32).

Found on megatron-core 0.16.1 (CPU, no Apex/TE):
- The sample-index builder needs the C++ ``helpers_cpp`` extension; the wheel ships it
  prebuilt (``helpers_cpp.cpython-311-x86_64-linux-gnu.so``), so no ``make`` is needed.
- ``GPTDataset`` and ``BlendedMegatronDatasetBuilder`` build on CPU without a process
  group when ``is_built_on_rank`` is given; with a ``path_to_cache`` the
  ``BlendedDataset`` calls ``torch.distributed.get_rank()`` unguarded, so either keep
  ``path_to_cache=None`` (indices built in memory, the default here) or initialise a
  process group first (the pretraining stage does).
- The config's tokenizer must expose ``vocab_size``, ``eod`` and a JSON-able
  ``unique_identifiers`` (it is hashed into the cache key): :class:`MegatronTokenizerAdapter`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from slingshot.io import atomic_path, sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class IndexedStats(BaseModel):
    prefix: str
    documents: int
    tokens: int
    dtype: str
    bin_sha256: str
    idx_sha256: str


def token_dtype(vocab_size: int) -> type[np.number]:
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


# A batch of documents: their token ids concatenated (end-of-document ids included), and
# each document's length.
DocumentBatch = tuple[np.ndarray, np.ndarray]


def document_batches(
    documents: Iterable[Sequence[int]], eod_id: int | None = None, batch_size: int = 1024
) -> Iterator[DocumentBatch]:
    """Documents as :data:`DocumentBatch` es, ``eod_id`` appended to each when given, empty ones dropped."""
    flat: list[int] = []
    lengths: list[int] = []
    for doc in documents:
        ids = list(doc) + ([eod_id] if eod_id is not None else [])
        if ids:  # Megatron cannot sample from an empty sequence
            flat += ids
            lengths.append(len(ids))
        if len(lengths) == batch_size:
            yield np.asarray(flat, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
            flat, lengths = [], []
    if lengths:
        yield np.asarray(flat, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def write_indexed_dataset(
    prefix: str | os.PathLike[str],
    documents: Iterable[Sequence[int]],
    vocab_size: int,
    eod_id: int | None = None,
) -> IndexedStats:
    """Write ``prefix.bin``/``prefix.idx``; append ``eod_id`` to each document when given."""
    return write_indexed_batches(prefix, document_batches(documents, eod_id), vocab_size)


def write_indexed_batches(
    prefix: str | os.PathLike[str], batches: Iterable[DocumentBatch], vocab_size: int
) -> IndexedStats:
    """Write ``prefix.bin``/``prefix.idx`` from :data:`DocumentBatch` es, one sequence per document.

    The bytes are those of ``IndexedDatasetBuilder.add_item`` + ``end_document`` per
    document; a batch is written at once (the per-document calls cost more than the
    tokenizer). Both files are written to temp names and renamed, .bin first then .idx,
    so a reader that finds the .idx always finds its complete .bin.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = token_dtype(vocab_size)
    prefix = str(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    n_docs = n_tokens = 0
    # Nesting order matters: the inner (.bin) is renamed into place before the outer (.idx).
    with atomic_path(prefix + ".idx") as idx_tmp, atomic_path(prefix + ".bin") as bin_tmp:
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype)
        for flat, lengths in batches:
            if flat.size and (flat.max() >= vocab_size or flat.min() < 0):
                bad = int(np.flatnonzero((flat >= vocab_size) | (flat < 0))[0])
                doc = n_docs + int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
                raise ValueError(f"document {doc}: token id out of range [0, {vocab_size})")
            builder.data_file.write(flat.astype(dtype).tobytes(order="C"))
            start = len(builder.sequence_lengths)
            builder.sequence_lengths.extend(lengths.tolist())
            builder.document_indices.extend(range(start + 1, start + len(lengths) + 1))
            n_docs += len(lengths)
            n_tokens += int(flat.size)
        builder.finalize(str(idx_tmp))
    return _stats(prefix, n_docs, n_tokens, np.dtype(dtype).name)


def _stats(prefix: str, documents: int, tokens: int, dtype: str) -> IndexedStats:
    return IndexedStats(
        prefix=prefix,
        documents=documents,
        tokens=tokens,
        dtype=dtype,
        bin_sha256=sha256_file(prefix + ".bin"),
        idx_sha256=sha256_file(prefix + ".idx"),
    )


def check_indexed_corpus(prefix: str | os.PathLike[str], vocab_size: int, where: str) -> IndexedStats:
    """Take an existing Megatron dataset as it is, if the tokenizer's ids fit it: its files
    exist, its dtype holds every id below ``vocab_size`` and no token id is ``>= vocab_size``.
    ``where`` names the corpus in the errors."""
    prefix = str(prefix)
    for suffix in (".bin", ".idx"):
        if not Path(prefix + suffix).is_file():
            raise ValueError(f"{where}: '{prefix}{suffix}' does not exist (path is the .bin/.idx prefix)")
    dataset = read_indexed_dataset(prefix)
    dtype = np.dtype(dataset.index.dtype)
    if np.iinfo(dtype).max < vocab_size - 1:
        raise ValueError(
            f"{where}: '{prefix}' stores {dtype.name} tokens, too narrow for the tokenizer's {vocab_size} ids: "
            "it was tokenized with another tokenizer"
        )
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    top = int(tokens.max()) if tokens.size else -1
    if top >= vocab_size:
        raise ValueError(
            f"{where}: '{prefix}' holds token id {top}, but the tokenizer has {vocab_size} ids: "
            "it was tokenized with another tokenizer"
        )
    return _stats(prefix, int(len(dataset.document_indices) - 1), int(tokens.size), dtype.name)


def read_indexed_dataset(prefix: str | os.PathLike[str]) -> Any:
    """Megatron's ``IndexedDataset``. Its items are views of an mmap that is closed when
    the dataset is garbage-collected: keep the dataset referenced while using them
    (``read_indexed_dataset(p)[0]`` on a temporary can segfault later)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(str(prefix), mmap=True)


class MegatronTokenizerAdapter:
    """What Megatron's dataset classes need from a tokenizer, around an HF tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str = "hf") -> None:
        self._tok = tokenizer
        self.name = name

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def eod(self) -> int:
        return int(self._tok.eos_token_id)

    @property
    def eos(self) -> int:
        return self.eod

    @property
    def pad(self) -> int:
        pad = self._tok.pad_token_id
        return int(pad) if pad is not None else -1

    @property
    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab()

    @property
    def unique_identifiers(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
        }

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


def gpt_dataset_config(
    tokenizer: MegatronTokenizerAdapter,
    sequence_length: int,
    seed: int,
    blend: tuple[list[str], list[float] | None] | None = None,
    blend_per_split: list[tuple[list[str], list[float] | None] | None] | None = None,
    split: str | None = None,
    path_to_cache: str | None = None,
    reset_position_ids: bool = True,
    reset_attention_mask: bool = False,
    eod_mask_loss: bool = False,
) -> Any:
    """``GPTDatasetConfig`` with CPU-friendly defaults (no attention mask tensor built)."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=sequence_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=path_to_cache,
        tokenizer=tokenizer,  # type: ignore[arg-type]
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=reset_attention_mask,
        mid_level_dataset_surplus=0.005,
    )


def build_gpt_datasets(config: Any, sizes: list[int | None]) -> list[Any]:
    """[train, valid, test] via ``BlendedMegatronDatasetBuilder``; single process / every rank."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
