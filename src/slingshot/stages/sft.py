"""SFT: long chain-of-thought supervised fine-tuning on the synthesized set (SPEC §4).

1. Read the training records: the synthesis stage's dataset (``problem`` and the full
   completion ``<think>…</think>\\n\\boxed{answer}`` in ``solution``) and any user
   datasets (prompt/response fields, weighted), each logged as an MLflow input.
2. Hold out a fixed share of the distinct prompts (by content hash) for the eval loss.
3. Render each record with the chat template (the thought as ``reasoning_content`` so
   it becomes ``<think>…</think>`` before the answer) with labels on the response only.
4. Train with the shared supervised loop (slingshot.train.supervised): packing without
   cross-example attention, AdamW + warmup/cosine, gradient accumulation, FSDP2 or
   all-reduce data parallelism, exact resume.
5. Write the HF model directory (atomic, rank 0) and register it in MLflow as
   ``<variant>-sft``. Step metrics are unprefixed (``loss``, ``grad_norm``, ...), the
   held-out ones ``val/loss`` and ``val/tokens``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slingshot import dist
from slingshot.config import SFTConfig, SFTDataset
from slingshot.context import StageContext, StageResult
from slingshot.data.corpora import CorpusSpec, FieldMap, read_corpus
from slingshot.data.packing import SFTExample, tokenize_sft
from slingshot.io import sha256_file
from slingshot.models.hf import enable_activation_checkpointing, load_model_and_tokenizer, save_model_dir
from slingshot.train.supervised import SupervisedSettings, SupervisedTrainer

_FORMATS = {"jsonl": "jsonl", "parquet": "parquet", "hf": "hf_disk"}


def split_completion(text: str, tags: tuple[str, str] = ("<think>", "</think>")) -> tuple[str | None, str]:
    """(thought, answer) of ``<think>thought</think> answer``; (None, text) without a thought.

    ``tags`` are the thinking tags (``chat.think_open``/``think_close``). The chat template
    writes the thought back as ``<think>\\n…\\n</think>\\n``, so a completion in the
    teacher's format renders exactly as it was generated.
    """
    opening, closing = (re.escape(t) for t in tags)
    match = re.match(rf"^\s*{opening}\n?(?P<thought>.*?)\n?{closing}\s*(?P<answer>.*)$", text, re.DOTALL)
    if match is None:
        return None, text
    return match["thought"], match["answer"]


def path_digest(path: str | Path) -> str:
    """Content digest of a file, or of every file under a directory (names included)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def synth_records(path: str | Path) -> list[dict[str, str]]:
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    missing = {"problem", "solution"} - set(ds.column_names)
    if missing:
        raise ValueError(f"synthesis dataset {path} lacks columns {sorted(missing)}; has {ds.column_names}")
    return [
        {"id": f"synth:{i}", "prompt": row["problem"], "response": row["solution"]}
        for i, row in enumerate(ds.select_columns(["problem", "solution"]))
    ]


def extra_records(index: int, spec: SFTDataset) -> list[dict[str, str]]:
    corpus = CorpusSpec(
        name=f"extra{index}",
        path=spec.path,
        format=_FORMATS[spec.format],
        fields=FieldMap(prompt=spec.prompt_field, response=spec.response_field),
    )
    return list(read_corpus(corpus))


def held_out_prompts(prompts: Iterable[str], fraction: float, max_examples: int) -> set[str]:
    """The prompts with the smallest content hashes: a split independent of data order.

    Whole prompts are held out, so several solutions of one problem never straddle the
    train/eval boundary.
    """
    unique = sorted(set(prompts), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    n = min(math.ceil(fraction * len(unique)), max_examples) if fraction > 0 else 0
    n = min(n, len(unique) - 1)  # always leave something to train on
    return set(unique[: max(n, 0)])


def weighted(n: int, weight: float, seed: int, source: int) -> list[int]:
    """Indices of ``weight`` copies of a source of ``n`` examples: whole copies, then a fixed seeded subset."""
    whole = int(weight)
    extra = round((weight - whole) * n)
    rng = np.random.default_rng([seed, 7919, source])
    subset = sorted(rng.choice(n, size=extra, replace=False).tolist()) if extra else []
    return list(range(n)) * whole + subset


def tokenize_records(
    tokenizer: Any,
    records: list[dict[str, str]],
    max_length: int,
    tags: tuple[str, str] = ("<think>", "</think>"),
) -> list[SFTExample]:
    out = []
    for record in records:
        thought, answer = split_completion(record["response"], tags)
        out.append(
            tokenize_sft(
                tokenizer, record["prompt"], answer, thought, max_length=max_length, example_id=record["id"]
            )
        )
    return out


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, SFTConfig)
    seed = ctx.pipeline.pipeline.seed
    torch.manual_seed(seed)

    # 1. sources (each one an MLflow input)
    sources: list[tuple[str, list[dict[str, str]], float]] = []
    if cfg.use_synth:
        synth = ctx.upstream_of_kind("synth")
        key = "dataset" if cfg.synth_dataset == "selected" else "random_subset_dataset"
        if key not in synth["outputs"]:
            raise ValueError(
                f"{ctx.stage}: stages.sft.synth_dataset is {cfg.synth_dataset}, but synthesis "
                f"{synth['key']} wrote no {key} (it ran, or resumed, on a version of before the control set: "
                "rerun that synthesis)"
            )
        dataset = synth["outputs"][key]
        sources.append(("synth", synth_records(dataset), 1.0))
        ctx.log_file_input("synth", dataset, digest=path_digest(dataset))
    for i, spec in enumerate(cfg.extra_datasets):
        sources.append((f"extra{i}", extra_records(i, spec), spec.weight))
        ctx.log_file_input(f"sft-extra{i}:{Path(spec.path).name}", spec.path, digest=path_digest(spec.path))
    if not sources or not any(records for _, records, _ in sources):
        raise ValueError(
            f"{ctx.stage}: no SFT data (use_synth={cfg.use_synth}, {len(cfg.extra_datasets)} extra datasets)"
        )

    # 2. held-out prompts
    held = held_out_prompts(
        (r["prompt"] for _, recs, _ in sources for r in recs), cfg.eval_fraction, cfg.eval_max_examples
    )

    # 3. tokenize; keep the examples that still supervise something after truncation
    model, tokenizer = load_model_and_tokenizer(ctx.require_input_model())
    if cfg.attn_implementation:
        model.set_attn_implementation(cfg.attn_implementation)
    if cfg.memory.activation_checkpointing:
        enable_activation_checkpointing(model)
    # Packed positions restart per example, so only one example must fit the model's positions.
    max_length = min(cfg.seq_length, getattr(model.config, "max_position_embeddings", None) or cfg.seq_length)
    think_tags = (ctx.pipeline.chat.think_open, ctx.pipeline.chat.think_close)
    train: list[SFTExample] = []
    evaluation: list[SFTExample] = []
    dropped = truncated = 0
    for source, (_, records, weight) in enumerate(sources):
        examples = tokenize_records(tokenizer, records, max_length, think_tags)
        mine: list[SFTExample] = []
        for record, example in zip(records, examples, strict=True):
            truncated += example.truncated
            if example.n_supervised == 0:
                dropped += 1
            elif record["prompt"] in held:
                evaluation.append(example)
            else:
                mine.append(example)
        # A weight repeats examples (references, not copies) within each epoch's permutation.
        train.extend(mine[i] for i in weighted(len(mine), weight, seed, source))
    evaluation = evaluation[: cfg.eval_max_examples]
    ctx.tracker.set_tags(
        {
            "sft.train_examples": len(train),
            "sft.eval_examples": len(evaluation),
            "sft.dropped_examples": dropped,
            "sft.truncated_examples": truncated,
        }
    )

    # 4. train
    settings = SupervisedSettings.from_config(cfg, seed)
    trainer = SupervisedTrainer(model, train, settings, ctx.dist, tokenizer.pad_token_id, evaluation)
    ctx.tracker.set_tags(
        {"sft.packing": trainer.packing, "sft.parallel": trainer.mode, "sft.attention": trainer.layout}
    )
    metrics = trainer.fit(ctx)

    # 5. outputs (rank 0; the FSDP gather is collective, so every rank calls export)
    model_dir = ctx.output_dir / "model"
    exported = trainer.export_model()
    if ctx.dist.is_main:
        assert exported is not None
        save_model_dir(exported, tokenizer, model_dir)
    ctx.publish_model(model_dir, params={"steps": trainer.total_steps})
    dist.barrier()  # no rank reports done before the model directory exists
    return StageResult(
        outputs={"model_dir": str(model_dir)},
        # The final training loss, the held-out loss (when there is a held-out set), the steps.
        metrics={k: metrics[k] for k in ("loss", "val/loss", "steps") if k in metrics},
        tokens=int(trainer.progress["tokens"]),
        extra={
            "sft": {
                "train_examples": len(train),
                "eval_examples": len(evaluation),
                "packing": trainer.packing,
                "attention": trainer.layout,
            }
        },
    )
