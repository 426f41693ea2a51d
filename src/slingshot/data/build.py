"""One call that builds every data artifact of a recipe: ``build_tiny_corpora(cfg, out_dir)``.

Layout under ``out_dir``::

    tasks/{train,validation,test}.jsonl   task entries (held-out hashes never in train)
    corpora/general.jsonl                 generated general text        {"id", "text"}
    corpora/reasoning.jsonl               prompt + teacher trace        {"id", "text", "prompt", "response", "form", ...}
    tokenizer/                            save_pretrained() tokenizer with chat template
    indexed/<corpus>.bin / .idx           Megatron-Core indexed datasets (eod after each doc)

The returned dict is meant for the stage manifest: paths, record counts, token counts
and sha256 digests of every file.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from slingshot.data.config import DataConfig
from slingshot.data.corpora import (
    CorpusSpec,
    TextChunk,
    chunk_texts,
    read_corpus,
    record_text,
    text_chunks,
    write_jsonl,
)
from slingshot.data.megatron_indexed import DocumentBatch, check_indexed_corpus, write_indexed_batches
from slingshot.data.synthetic import generate_general_text, reasoning_records
from slingshot.data.tasks import held_out_hashes, make_splits
from slingshot.data.teacher import ProceduralTeacher
from slingshot.data.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from slingshot.io import sha256_file, sha256_json


def _texts(specs: list[CorpusSpec]) -> Iterator[str]:
    for spec in specs:
        if spec.format != "megatron":  # already tokenized: no text
            for rec in read_corpus(spec):
                yield record_text(rec)


class ChunkEncoder:
    """A text chunk -> its :data:`DocumentBatch` (each document's ids, then ``eod_id``).

    Built from the backend tokenizer's serialised state, so a worker process encodes with
    exactly the tokenizer of the main process (the Rust ``encode_batch`` the serial path uses).
    """

    def __init__(self, tokenizer_json: str, eod_id: int | None) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer_json)
        self.eod = [] if eod_id is None else [eod_id]

    def __call__(self, chunk: TextChunk) -> DocumentBatch:
        docs = [
            e.ids + self.eod for e in self.backend.encode_batch(chunk_texts(chunk), add_special_tokens=False)
        ]
        docs = [d for d in docs if d]  # Megatron cannot sample from an empty sequence
        flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int64)
        return flat, np.asarray([len(d) for d in docs], dtype=np.int64)


_WORKER_ENCODER: ChunkEncoder | None = None


def _init_worker(tokenizer_json: str, eod_id: int | None) -> None:
    global _WORKER_ENCODER
    os.environ["RAYON_NUM_THREADS"] = "1"  # one process per CPU: no tokenizer threads on top
    _WORKER_ENCODER = ChunkEncoder(tokenizer_json, eod_id)


def _encode_in_worker(chunk: TextChunk) -> DocumentBatch:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER(chunk)


def job_cpus() -> int:
    """The CPUs this job may run on (Slurm and taskset restrict the affinity mask)."""
    return len(os.sched_getaffinity(0))


@contextmanager
def chunk_encoder(tokenizer: Any, workers: int) -> Iterator[Any]:
    """``encode(chunks) -> DocumentBatch``es in order: in ``workers`` processes, or in this one
    (workers <= 1). Both give the same batches, so the written files are the same bytes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"data.tokenizer: {type(tokenizer).__name__} is not a fast (Rust) tokenizer")
    state = (backend.to_str(), tokenizer.eos_token_id)
    if workers <= 1:
        encoder = ChunkEncoder(*state)
        yield lambda chunks: map(encoder, chunks)
        return
    # spawn: the main process holds torch/tokenizer threads that a fork would copy mid-state.
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, state) as pool:
        yield lambda chunks: pool.imap(_encode_in_worker, chunks, chunksize=1)


def build_tiny_corpora(
    cfg: DataConfig, out_dir: str | os.PathLike[str], workers: int | None = None
) -> dict[str, Any]:
    """Build tasks, corpora, tokenizer and indexed datasets; return counts and digests.

    Corpora are tokenized in ``workers`` processes (None: one per CPU of the job); the
    files are the same bytes for any number. ``format: megatron`` corpora are taken as
    they are, once their token ids are checked to fit the tokenizer.
    """
    out = Path(out_dir)
    manifest: dict[str, Any] = {"config_sha256": sha256_json(cfg.model_dump(mode="json"))}

    splits = make_splits(cfg.families, cfg.splits, cfg.seed, settings=cfg.task_settings)
    manifest["tasks"] = {
        name: write_jsonl(out / "tasks" / f"{name}.jsonl", entries).model_dump()
        for name, entries in splits.items()
    }
    manifest["held_out_hashes"] = len(held_out_hashes(splits))

    general = write_jsonl(
        out / "corpora" / "general.jsonl",
        generate_general_text(
            cfg.general_docs, cfg.seed, cfg.general_min_sentences, cfg.general_max_sentences
        ),
    )
    teacher = ProceduralTeacher(error_rate=cfg.teacher_error_rate, seed=cfg.seed)
    reasoning = write_jsonl(
        out / "corpora" / "reasoning.jsonl",
        reasoning_records(
            splits["train"], teacher, cfg.reasoning_samples_per_entry, cfg.inline_thoughts, cfg.seed
        ),
    )
    manifest["corpora"] = {"general": general.model_dump(), "reasoning": reasoning.model_dump()}

    specs = [
        CorpusSpec(name="general", path=general.path, format="jsonl"),
        CorpusSpec(name="reasoning", path=reasoning.path, format="jsonl"),
        *cfg.extra_corpora,
    ]
    tok_dir = out / "tokenizer"
    if cfg.tokenizer.path:
        tokenizer = load_tokenizer(cfg.tokenizer.path)
        save_tokenizer(tokenizer, tok_dir)  # a copy: downstream stages read one place
    else:
        texts = itertools.islice(_texts(specs), cfg.tokenizer.max_train_docs)
        tokenizer = train_bpe(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        save_tokenizer(tokenizer, tok_dir)
    manifest["tokenizer"] = {
        "path": str(tok_dir),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "files": {f.name: sha256_file(f) for f in sorted(tok_dir.iterdir()) if f.is_file()},
    }

    manifest["indexed"] = {}
    manifest["tokens"] = {}
    if cfg.write_indexed:
        with chunk_encoder(tokenizer, job_cpus() if workers is None else workers) as encode:
            for spec in specs:
                if spec.format == "megatron":
                    where = f"data.extra_corpora '{spec.name}'"
                    stats = check_indexed_corpus(spec.path, len(tokenizer), where)
                else:
                    stats = write_indexed_batches(
                        out / "indexed" / spec.name, encode(text_chunks(spec)), len(tokenizer)
                    )
                manifest["indexed"][spec.name] = stats.model_dump()
                manifest["tokens"][spec.name] = stats.tokens
    return manifest
