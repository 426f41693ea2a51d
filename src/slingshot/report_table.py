"""The report's comparison table: one row per variant x evaluated stage, in recipe order.

A row holds the stage's evaluation metrics (pass@k for every k any variant evaluates,
mean response length, parse rate); a metric the evaluation did not report is NaN, written
as an empty cell in ``table.csv`` and as "–" in ``table.md``.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from slingshot.config import MODEL_CHAIN, PipelineConfig
from slingshot.plan import Plan

BASE_COLUMNS = ("variant", "stage", "model", "prompts")
TAIL_COLUMNS = ("response_tokens", "parse_rate")


def k_columns(cfg: PipelineConfig) -> list[str]:
    ks = {1}
    for variant in cfg.variants:
        ks |= set(cfg.variant_stages(variant).evaluate.k)
    return [f"pass_at_{k}" for k in sorted(ks)]


def table_rows(cfg: PipelineConfig, plan: Plan, manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Variant x stage rows in recipe order; a metric the evaluation did not report is NaN."""
    columns = k_columns(cfg)
    rows = []
    for variant in cfg.variants:
        for kind in MODEL_CHAIN:
            try:
                node = plan.node(variant, f"evaluate-{kind}")
            except KeyError:
                continue  # this variant does not evaluate (or has no) such stage
            manifest = manifests.get(node.key)
            if manifest is None:
                continue
            metrics = manifest.get("metrics", {})
            row: dict[str, Any] = {
                "variant": variant,
                "stage": kind,
                "model": node.model_from or "",
                "prompts": int(metrics["prompts"]) if "prompts" in metrics else "",
            }
            for name in (*columns, *TAIL_COLUMNS):
                row[name] = float(metrics.get(name, math.nan))
            rows.append(row)
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
