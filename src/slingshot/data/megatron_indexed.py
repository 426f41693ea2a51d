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
from collections.abc import Iterable, Sequence
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


def write_indexed_dataset(
    prefix: str | os.PathLike[str],
    documents: Iterable[Sequence[int]],
    vocab_size: int,
    eod_id: int | None = None,
) -> IndexedStats:
    """Write ``prefix.bin``/``prefix.idx``; append ``eod_id`` to each document when given.

    Both files are written to temp names and renamed, .bin first then .idx, so a reader
    that finds the .idx always finds its complete .bin.
    """
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    dtype = token_dtype(vocab_size)
    prefix = str(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    n_docs = n_tokens = 0
    # Nesting order matters: the inner (.bin) is renamed into place before the outer (.idx).
    with atomic_path(prefix + ".idx") as idx_tmp, atomic_path(prefix + ".bin") as bin_tmp:
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype)
        for doc in documents:
            ids = list(doc) + ([eod_id] if eod_id is not None else [])
            if not ids:
                continue  # Megatron cannot sample from an empty sequence
            if max(ids) >= vocab_size or min(ids) < 0:
                raise ValueError(f"document {n_docs}: token id out of range [0, {vocab_size})")
            builder.add_item(torch.tensor(ids, dtype=torch.int64))
            builder.end_document()
            n_docs += 1
            n_tokens += len(ids)
        builder.finalize(str(idx_tmp))
    return IndexedStats(
        prefix=prefix,
        documents=n_docs,
        tokens=n_tokens,
        dtype=np.dtype(dtype).name,
        bin_sha256=sha256_file(prefix + ".bin"),
        idx_sha256=sha256_file(prefix + ".idx"),
    )


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
