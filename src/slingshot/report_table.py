"""The report's comparison table: one row per variant x evaluated stage, in recipe order.

A row holds the stage's evaluation metrics (pass@k for every k any variant evaluates,
mean response length, parse rate); a metric the evaluation did not report is NaN, written
as an empty cell in ``table.csv`` and as "–" in ``table.md``. The benchmark table
(:func:`benchmark_rows`) has one row per variant x evaluated stage x benchmark, read from
the evaluation's ``bench/<name>/<metric>`` metrics. The cost table (:func:`cost_rows`) has one
row per stage node: elapsed time, GPU-hours, CPU-hours, queue wait, requeues and resubmits
(:mod:`slingshot.launch.cost`), shared by the report and ``slingshot status --cost``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from slingshot.config import MODEL_CHAIN, PipelineConfig
from slingshot.plan import Plan

BASE_COLUMNS = ("variant", "stage", "model", "prompts")
COST_COLUMNS = (
    "stage",
    "source",
    "jobs",
    "elapsed_s",
    "gpu_hours",
    "cpu_hours",
    "queue_wait_s",
    "requeues",
    "resubmits",
)
BENCH_BASE_COLUMNS = ("variant", "stage", "benchmark", "prompts")
TAIL_COLUMNS = ("response_tokens", "parse_rate")


def k_columns(cfg: PipelineConfig) -> list[str]:
    ks = {1}
    for variant in cfg.variants:
        ks |= set(cfg.variant_stages(variant).evaluate.k)
    return [f"pass_at_{k}" for k in sorted(ks)]


def evaluated(
    cfg: PipelineConfig, plan: Plan, manifests: dict[str, dict[str, Any]]
) -> Iterator[tuple[str, str, str, dict[str, float]]]:
    """(variant, stage kind, model node, metrics) of every evaluation with a manifest, in recipe order."""
    for variant in cfg.variants:
        for kind in MODEL_CHAIN:
            try:
                node = plan.node(variant, f"evaluate-{kind}")
            except KeyError:
                continue  # this variant does not evaluate (or has no) such stage
            manifest = manifests.get(node.key)
            if manifest is not None:
                yield variant, kind, node.model_from or "", manifest.get("metrics", {})


def _metric_row(
    base: dict[str, Any], metrics: dict[str, float], columns: list[str], prefix: str = ""
) -> dict:
    prompts = metrics.get(f"{prefix}prompts")
    row: dict[str, Any] = {**base, "prompts": int(prompts) if prompts is not None else ""}
    for name in (*columns, *TAIL_COLUMNS):
        row[name] = float(metrics.get(f"{prefix}{name}", math.nan))
    return row


def table_rows(cfg: PipelineConfig, plan: Plan, manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Variant x stage rows in recipe order; a metric the evaluation did not report is NaN."""
    columns = k_columns(cfg)
    return [
        _metric_row({"variant": variant, "stage": kind, "model": model}, metrics, columns)
        for variant, kind, model, metrics in evaluated(cfg, plan, manifests)
    ]


def benchmark_rows(
    cfg: PipelineConfig, plan: Plan, manifests: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Variant x stage x benchmark rows (the variant's ``stages.evaluate.benchmarks`` order) for
    every benchmark the evaluation reported; the same metric columns as :func:`table_rows`."""
    columns = k_columns(cfg)
    rows = []
    for variant, kind, _, metrics in evaluated(cfg, plan, manifests):
        for bench in cfg.variant_stages(variant).evaluate.benchmarks:
            prefix = f"bench/{bench.name}/"
            if any(key.startswith(prefix) for key in metrics):
                base = {"variant": variant, "stage": kind, "benchmark": bench.name}
                rows.append(_metric_row(base, metrics, columns, prefix))
    return rows


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def table_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([format_cell(r.get(c, "")) for c in columns])
    return buffer.getvalue()


def table_md(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(format_cell(r.get(c, "")) or "–" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def cost_rows(cfg: PipelineConfig, plan: Plan, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per stage node that was submitted, in recipe order: the cost the launcher
    recorded when the stage finished (``cost.json``), else the cost so far."""
    from slingshot.launch.cost import measure_cost, read_cost
    from slingshot.launch.launcher import node_resources

    rows = []
    for node in plan.ordered():
        if node.key in skip:
            continue
        work_dir = node.work_dir(cfg)
        cost = read_cost(work_dir) or measure_cost(work_dir, node_resources(cfg, node))
        if cost is not None:
            rows.append({"stage": node.key, **asdict(cost)})
    return rows
