"""Evaluation stage (SPEC §6): one stage's final model on held-out test instances.

For each task family, ``prompts_per_task`` test instances are drawn by a fixed seed
(the same instances for every stage and variant, so the numbers are comparable), each
answered ``n_samples`` times through the rollout backend. Per family and overall:

- pass@1 = mean correctness over the n samples (averaged over prompts),
- unbiased pass@k = 1 - C(n-c, k) / C(n, k) for every k in ``config.k``,
- mean response length (generated tokens, the stop token not counted),
- parse rate: the fraction of samples with an extractable final answer.

A sample that hit ``max_new_tokens`` before its stop token is truncated: it counts as
unparsed and wrong (as in ProRL's reward), even if a box happened to appear in it.

Benchmarks (``config.benchmarks``: GSM8K, MATH, AIME, multiple choice, local files) are
read from their files, refused by name when a prompt occurs in the recipe's training data
(tasks train split, reasoning corpus, SFT datasets, the synthesized set), and evaluated as
families ``bench/<name>`` with the same n samples and seeds; their rows follow ``all``, their
metrics are ``bench/<name>/pass_at_1`` etc.

Outputs (``output_dir``): ``eval_table.csv`` / ``eval_table.json`` (one row per family
plus ``all``, then one per benchmark), ``samples.jsonl`` (every completion with its verdict). Batches done are
cached in the work dir, so a requeued job does not generate them again.

Ranks: every family's prompts are cut into batches of ``prompts_per_batch`` (one generate
call each, seeded by family and batch index, never by rank); ranks take contiguous, equal
shares of all batches (:func:`slingshot.dist.shard_indices`) and gather the samples in batch
order, so N ranks write the table and samples one rank does, and every rank works even
when there are fewer families than ranks. Prompts, scoring and the table are in
:mod:`slingshot.evaluation`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slingshot.config import borrowed_synth
from slingshot.context import StageContext, StageResult, read_manifest
from slingshot.data.chat import ChatFormat
from slingshot.data.tasks import derive_seed, load_entries
from slingshot.dist import all_gather_objects, map_sharded, shard_indices
from slingshot.evaluation import (
    EvalBatch,
    SampleResult,
    answer_budget,
    check_benchmarks_held_out,
    check_held_out,
    eval_batches,
    evaluate_family,
    flat_metrics,
    load_benchmarks,
    max_positions,
    select_prompts,
    summarize,
    table_csv,
    training_prompt_sources,
)
from slingshot.io import atomic_write_json, atomic_write_text, sha256_json
from slingshot.plan import build_plan


def synth_dataset(ctx: StageContext) -> str | None:
    """The synthesized set this variant's SFT trains on (its own or ``sft.synth_from``'s; the
    selection or the control set, ``sft.synth_dataset``), once that synthesis has run (else None)."""
    stages = ctx.pipeline.variant_stages(ctx.variant)
    source = borrowed_synth(stages, ctx.variant) or ctx.variant
    if not (
        stages.sft.enabled and stages.sft.use_synth and ctx.pipeline.variant_stages(source).synth.enabled
    ):
        return None
    manifest = build_plan(ctx.pipeline).node(source, "synth").manifest_path(ctx.pipeline)
    if not manifest.is_file():
        return None
    key = "dataset" if stages.sft.synth_dataset == "selected" else "random_subset_dataset"
    return read_manifest(manifest)["outputs"].get(key)


def run(ctx: StageContext, rollout_factory: Any = None) -> StageResult:
    """Evaluate ``ctx.input_model_dir``; ``rollout_factory(model, tokenizer, stop_ids)`` replaces the
    configured backend (tests)."""
    import torch

    from slingshot.models.hf import load_model_and_tokenizer
    from slingshot.rollout import make_rollout

    cfg = ctx.config
    started = time.monotonic()
    data = ctx.upstream_of_kind("data")["outputs"]
    test_path = Path(data["tasks_test"])
    entries = load_entries(test_path)
    check_held_out(entries, data)
    seed = ctx.pipeline.pipeline.seed
    chosen = select_prompts(entries, cfg.prompts_per_task, seed)
    prompts_path = ctx.output_dir / "eval_prompts.jsonl"
    if ctx.dist.is_main:
        atomic_write_text(prompts_path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in chosen))
    ctx.log_file_input("tasks-test", test_path, context="evaluation")
    ctx.log_file_input(
        "eval-prompts", prompts_path, context="evaluation", digest=sha256_json([e["hash"] for e in chosen])
    )
    benchmarks = load_benchmarks(cfg.benchmarks, seed)
    if benchmarks:
        sources = training_prompt_sources(ctx.pipeline, ctx.variant, data, synth_dataset(ctx))
        check_benchmarks_held_out(benchmarks, sources)
    for spec in cfg.benchmarks:
        digest = sha256_json([e["hash"] for e in benchmarks[spec.name]])
        ctx.log_file_input(f"bench-{spec.name}", spec.path, context="evaluation", digest=digest)

    device = ctx.dist.device  # this rank's GPU (or the CPU)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model_dir = ctx.require_input_model()
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype=dtype, device=device)
    chat = ChatFormat.of(tokenizer, ctx.pipeline.chat)
    stop_ids = chat.stop_ids
    rollout = (rollout_factory or (lambda m, t, s: make_rollout(cfg.rollout, m, t, s, ctx.stage)))(
        model, tokenizer, stop_ids
    )

    groups: dict[str, list[dict]] = {}
    for entry in chosen + [e for entries in benchmarks.values() for e in entries]:
        groups.setdefault(entry["family"], []).append(entry)
    # Budgets from each family's whole prompt set, on every rank: a batch's budget never
    # depends on which rank runs it.
    budgets = {
        family: answer_budget(tokenizer, entries, cfg.max_new_tokens, max_positions(model))
        for family, entries in groups.items()
    }
    for family, max_new in sorted(budgets.items()):
        if max_new < cfg.max_new_tokens and ctx.dist.is_main:
            print(
                f"[{ctx.stage}] {family}: max_new_tokens {cfg.max_new_tokens} -> {max_new} (model positions)"
            )
    batches = eval_batches(groups, cfg.prompts_per_batch)
    cache_dir = ctx.work_dir / "batches"

    def run_batch(batch: EvalBatch) -> list[SampleResult]:
        batch_seed = derive_seed(seed, "evaluate-samples", batch.family, batch.index)
        key = sha256_json(
            [batch.family, [e["hash"] for e in batch.entries], batch_seed, cfg.n_samples, cfg.temperature]
        )
        cached = cache_dir / f"{key[:32]}.json"
        if cached.is_file():  # done before a requeue: same prompts, same seed, same model
            return [SampleResult(**r) for r in json.loads(cached.read_text())]
        got = evaluate_family(
            rollout,
            tokenizer,
            batch.entries,
            cfg.n_samples,
            budgets[batch.family],
            cfg.temperature,
            batch_seed,
            stop_ids,
            chat.think_tags,
        )
        atomic_write_json(cached, [asdict(r) for r in got])
        return got

    # Ranks share the batches of every family (not whole families), gathered in batch order:
    # every rank works however few the families are, and the samples are one process's.
    mine = shard_indices(len(batches), ctx.dist.rank, ctx.dist.world_size)
    prompts_by_rank = all_gather_objects(sum(len(batches[i].entries) for i in mine))
    results = [r for part in map_sharded(run_batch, batches) for r in part]
    is_bench = {f: f.startswith("bench/") for f in groups}
    rows = summarize([r for r in results if not is_bench[r.family]], cfg.k)
    bench_rows = summarize([r for r in results if is_bench[r.family]], cfg.k)[:-1] if benchmarks else []
    rows += bench_rows  # after "all": a benchmark is not part of the task families' overall score
    metrics = flat_metrics(rows)
    metrics.update({f"{r['family']}/prompts": float(r["prompts"]) for r in bench_rows})
    metrics["eval_seconds"] = time.monotonic() - started
    if ctx.dist.is_main:
        for row in rows:
            print(
                f"[{ctx.stage}] {row['family']}: pass@1 {row['pass_at_1']:.3f} parse {row['parse_rate']:.3f}",
                flush=True,
            )

    outputs = {
        "table_csv": str(ctx.output_dir / "eval_table.csv"),
        "table_json": str(ctx.output_dir / "eval_table.json"),
        "samples": str(ctx.output_dir / "samples.jsonl"),
        "prompts": str(prompts_path),
    }
    if ctx.dist.is_main:
        atomic_write_text(outputs["table_csv"], table_csv(rows))
        atomic_write_json(outputs["table_json"], rows)
        atomic_write_text(
            outputs["samples"], "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in results)
        )
        ctx.tracker.log_metrics(metrics, step=0)
        ctx.tracker.log_artifact(outputs["table_csv"])
        ctx.tracker.log_artifact(outputs["table_json"])
    generated = sum(r.tokens for r in results)
    return StageResult(
        outputs=outputs,
        metrics=metrics,
        tokens=generated,
        extra={
            "evaluation": {
                "model_dir": str(model_dir),
                "model_from": ctx.model_from,
                "prompts": len(chosen),
                "benchmarks": {name: len(entries) for name, entries in benchmarks.items()},
                "n_samples": cfg.n_samples,
                "k": sorted(set(cfg.k)),
                "temperature": cfg.temperature,
                "max_new_tokens": cfg.max_new_tokens,
                "max_new_tokens_by_family": budgets,  # shortened where prompts are long
                "prompts_per_batch": cfg.prompts_per_batch,
                "prompts_by_rank": prompts_by_rank,  # (family, prompt) items each rank answered
                "table": rows,
            }
        },
    )
