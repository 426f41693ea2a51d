"""One call that builds every data artifact of a recipe: ``build_tiny_corpora(cfg, out_dir)``.

Layout under ``out_dir``::

    tasks/{train,validation,test}.jsonl   task entries (held-out hashes never in train)
    corpora/general.jsonl                 generated general text        {"id", "text"}
    corpora/reasoning.jsonl               prompt + teacher trace        {"id", "text", "prompt", "response", ...}
    tokenizer/                            save_pretrained() tokenizer with chat template
    indexed/<corpus>.bin / .idx           Megatron-Core indexed datasets (eod after each doc)

The returned dict is meant for the stage manifest: paths, record counts, token counts
and sha256 digests of every file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slingshot.data.config import DataConfig
from slingshot.data.corpora import CorpusSpec, read_corpus, record_text, write_jsonl
from slingshot.data.megatron_indexed import write_indexed_dataset
from slingshot.data.packing import tokenize_documents
from slingshot.data.synthetic import generate_general_text, reasoning_records
from slingshot.data.tasks import held_out_hashes, make_splits
from slingshot.data.teacher import ProceduralTeacher
from slingshot.data.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from slingshot.io import sha256_file, sha256_json


def _texts(specs: list[CorpusSpec]) -> Iterator[str]:
    for spec in specs:
        for rec in read_corpus(spec):
            yield record_text(rec)


def _token_docs(tokenizer: Any, spec: CorpusSpec, batch: int = 1024) -> Iterator[list[int]]:
    it = read_corpus(spec)
    while chunk := [record_text(r) for r in itertools.islice(it, batch)]:
        yield from tokenize_documents(tokenizer, chunk, batch_size=batch)


def build_tiny_corpora(cfg: DataConfig, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Build tasks, corpora, tokenizer and indexed datasets; return counts and digests."""
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
        reasoning_records(splits["train"], teacher, cfg.reasoning_samples_per_entry),
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
        for spec in specs:
            stats = write_indexed_dataset(
                out / "indexed" / spec.name,
                _token_docs(tokenizer, spec),
                vocab_size=len(tokenizer),
                eod_id=tokenizer.eos_token_id,
            )
            manifest["indexed"][spec.name] = stats.model_dump()
            manifest["tokens"][spec.name] = stats.tokens
    return manifest
