"""The report's figures: pass@1 by stage, and each training stage's learning curve.

The curves are read from MLflow through the run ids in the training stages' manifests;
metric names are looked up, not assumed (:func:`slingshot.tracking.key_metrics.pick_metric`: the kind's
key metric, else ``loss``, else the run's first metric), so a replaced entrypoint that logs
other names still draws.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from slingshot.config import MODEL_CHAIN, PipelineConfig
from slingshot.context import read_manifest
from slingshot.io import atomic_path
from slingshot.plan import Plan
from slingshot.tracking.key_metrics import pick_metric

# Variants that share a node draw the same line: styles keep the lower one visible.
LINE_STYLES = ("-", "--", ":", "-.")
# kind -> variant -> [(node stage, metric, steps, values)]
Curves = dict[str, dict[str, list[tuple[str, str, list[int], list[float]]]]]


# --------------------------------------------------------------------------- learning curves
def training_runs(cfg: PipelineConfig, plan: Plan) -> dict[str, list[tuple[str, str, str]]]:
    """Per variant: (kind, node stage, MLflow run id) of each finished training node, in order."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for variant in cfg.variants:
        for node in plan.ordered():
            if node.kind not in MODEL_CHAIN or variant not in node.variants:
                continue
            path = node.manifest_path(cfg)
            if not path.is_file():
                continue
            run_id = read_manifest(path).get("mlflow_run_id")
            if run_id:
                out.setdefault(variant, []).append((node.kind, node.stage, run_id))
    return out


def fetch_curves(client: Any, runs: dict[str, list[tuple[str, str, str]]]) -> Curves:
    """kind -> variant -> [(node stage, metric, steps, values)] of each run's key metric."""
    curves: Curves = {}
    for variant, nodes in runs.items():
        for kind, stage, run_id in nodes:
            try:
                available = list(client.get_run(run_id).data.metrics)
            except Exception:  # a deleted run must not sink the report
                continue
            metric = pick_metric(kind, available)
            if metric is None:
                continue
            history = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
            steps = [m.step for m in history]
            values = [m.value for m in history]
            curves.setdefault(kind, {}).setdefault(variant, []).append((stage, metric, steps, values))
    return curves


# --------------------------------------------------------------------------- plots
def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_pass_at_1(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [k for k in MODEL_CHAIN if any(r["stage"] == k for r in rows)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        points = [(stages.index(r["stage"]), r["pass_at_1"]) for r in rows if r["variant"] == variant]
        points = [(x, y) for x, y in points if not math.isnan(y)]
        if points:
            style = LINE_STYLES[i % len(LINE_STYLES)]
            ax.plot(*zip(*points, strict=True), marker="o", linestyle=style, label=variant)
    ax.set_xticks(range(len(stages)), stages)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("stage (recipe order)")
    ax.set_ylabel("pass@1 (held-out tasks)")
    ax.set_title("pass@1 by stage")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="variant")
    _save(fig, path)
    plt.close(fig)


def plot_curves(curves: Curves, path: Path) -> None:
    """One panel per training kind; phases of one stage are drawn one after another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in MODEL_CHAIN if k in curves] or ["(none)"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        if kind not in curves:
            ax.text(0.5, 0.5, "no training curves in MLflow", ha="center", va="center")
            ax.set_axis_off()
            continue
        metrics = set()
        for n, (variant, parts) in enumerate(curves[kind].items()):
            xs: list[int] = []
            ys: list[float] = []
            offset = 0
            for i, (_stage, metric, steps, values) in enumerate(parts):
                metrics.add(metric)
                if i and steps and xs and steps[0] <= xs[-1]:
                    offset = xs[-1]  # a phase that restarts its step count continues the line
                    ax.axvline(offset, color="grey", linestyle=":", linewidth=0.8)
                xs += [s + offset for s in steps]
                ys += values
                offset = 0
            ax.plot(xs, ys, label=variant, linewidth=1.2, linestyle=LINE_STYLES[n % len(LINE_STYLES)])
        ax.set_title(kind)
        ax.set_xlabel("step")
        ax.set_ylabel(", ".join(sorted(metrics)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("training curves (key metric per stage, from MLflow)")
    _save(fig, path)
    plt.close(fig)
