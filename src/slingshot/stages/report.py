"""Report stage: one comparison across stages and variants (SPEC §6).

Reads every evaluation manifest (its upstream) and writes to ``results/report/``:

- ``table.csv`` / ``table.md``: one row per variant x evaluated stage, in recipe order
  (pretrain, rlp, sft, prorl), with pass@1, pass@k, mean response length, parse rate;
- ``pass_at_1.png``: pass@1 by stage, one line per variant;
- ``curves.png``: each training stage's key metric over its steps, read from MLflow via
  the run ids in the stage manifests (metric names are looked up, not assumed: a stage
  that logs no known key metric shows its first one);
- ``mlflow-ui.png`` / ``mlflow-ui-run.png``: screenshots of the MLflow UI's runs page and
  of a stage run's page, after checking that the UI shows each stage run under its parent
  with its dataset inputs (slingshot.report_ui; by default when Chromium is installed,
  ``SLINGSHOT_REPORT_MLFLOW_UI=0`` turns it off, ``=1`` requires it).

Everything is logged as artifacts of the report run and of EVERY variant's parent run,
and each parent run gets ``eval.<metric>`` metrics at step = the stage's index in the
recipe, so MLflow's own charts compare variants stage by stage.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from slingshot.config import MODEL_CHAIN, PipelineConfig
from slingshot.context import StageContext, StageResult, read_manifest
from slingshot.io import atomic_path, atomic_write_text
from slingshot.plan import Plan, build_plan
from slingshot.report_ui import screenshot_runs_page, ui_wanted

TRAINING_KINDS = ("pretrain", "rlp", "sft", "prorl")
# Variants that share a node draw the same line: styles keep the lower one visible.
LINE_STYLES = ("-", "--", ":", "-.")
BASE_COLUMNS = ("variant", "stage", "model", "prompts")
TAIL_COLUMNS = ("response_tokens", "parse_rate")


# --------------------------------------------------------------------------- the table
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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def table_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_fmt(r.get(c, "")) for c in columns])
    return buffer.getvalue()


def table_md(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) or "–" for c in columns) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- learning curves
def training_runs(cfg: PipelineConfig, plan: Plan) -> dict[str, list[tuple[str, str, str]]]:
    """Per variant: (kind, node stage, MLflow run id) of each finished training node, in order."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for variant in cfg.variants:
        for node in plan.ordered():
            if node.kind not in TRAINING_KINDS or variant not in node.variants:
                continue
            path = node.manifest_path(cfg)
            if not path.is_file():
                continue
            run_id = read_manifest(path).get("mlflow_run_id")
            if run_id:
                out.setdefault(variant, []).append((node.kind, node.stage, run_id))
    return out


def fetch_curves(
    client: Any, runs: dict[str, list[tuple[str, str, str]]]
) -> dict[str, dict[str, list[tuple[str, str, list[int], list[float]]]]]:
    """kind -> variant -> [(node stage, metric, steps, values)] of each run's key metric."""
    from slingshot.status import pick_metric

    curves: dict[str, dict[str, list[tuple[str, str, list[int], list[float]]]]] = {}
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


def plot_curves(
    curves: dict[str, dict[str, list[tuple[str, str, list[int], list[float]]]]], path: Path
) -> None:
    """One panel per training kind; phases of one stage are drawn one after another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in TRAINING_KINDS if k in curves] or ["(none)"]
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


# --------------------------------------------------------------------------- MLflow
def parent_run_ids(cfg: PipelineConfig) -> dict[str, str]:
    out = {}
    for variant in cfg.variants:
        path = cfg.work_dir / variant / "mlflow_parent_run_id"
        if path.is_file() and path.read_text().strip():
            out[variant] = path.read_text().strip()
    return out


def log_to_parents(
    client: Any, parents: dict[str, str], rows: list[dict[str, Any]], files: list[Path], columns: list[str]
) -> None:
    """Artifacts on every variant's parent run, and ``eval.*`` metrics by recipe position."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    for variant, run_id in parents.items():
        for path in files:
            client.log_artifact(run_id, str(path), "report")
        metrics = []
        positions = []
        for r in (r for r in rows if r["variant"] == variant):
            step = MODEL_CHAIN.index(r["stage"])
            positions.append(f"{step}:{r['stage']}")
            for name in (*columns, *TAIL_COLUMNS):
                if not math.isnan(r[name]):
                    metrics.append(Metric(f"eval.{name}", r[name], now, step))
        tags = [RunTag("slingshot.eval_steps", ",".join(positions))]
        client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)


# --------------------------------------------------------------------------- stage
def run(ctx: StageContext) -> StageResult:
    cfg = ctx.pipeline
    plan = build_plan(cfg)
    out = ctx.output_dir
    columns = k_columns(cfg)
    rows = table_rows(cfg, plan, ctx.upstream)
    all_columns = [*BASE_COLUMNS, *columns, *TAIL_COLUMNS]
    files = {
        "table_csv": out / "table.csv",
        "table_md": out / "table.md",
        "pass_at_1_png": out / "pass_at_1.png",
        "curves_png": out / "curves.png",
    }
    if not ctx.dist.is_main:
        return StageResult(outputs={k: str(v) for k, v in files.items()})
    atomic_write_text(files["table_csv"], table_csv(rows, all_columns))
    atomic_write_text(files["table_md"], table_md(rows, all_columns))
    plot_pass_at_1(rows, files["pass_at_1_png"])

    ui: dict[str, Any] | None = None
    client = ctx.tracker.client
    if client is None:  # tracking disabled: curves come from a client of the configured store
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=cfg.tracking_uri)
    curves = fetch_curves(client, training_runs(cfg, plan))
    plot_curves(curves, files["curves_png"])

    if ui_wanted():
        ui = screenshot_runs_page(cfg.tracking_uri, cfg.experiment_name, out / "mlflow-ui.png", out)
        files["mlflow_ui_png"] = Path(ui["screenshot"])
        run_png = files["mlflow_ui_png"].with_name(f"{files['mlflow_ui_png'].stem}-run.png")
        if run_png.is_file():
            files["mlflow_ui_run_png"] = run_png
        bad = [c["name"] for c in ui["run_pages"] if not c["ok"]]
        print(
            f"[report] MLflow UI {ui['url']}: parents shown {ui['parents_shown']}; run pages not as expected: {bad}"
        )

    for path in files.values():
        ctx.tracker.log_artifact(path, "report")
    parents = parent_run_ids(cfg)
    if ctx.tracker.enabled:
        log_to_parents(ctx.tracker.client, parents, rows, list(files.values()), columns)

    metrics: dict[str, float] = {}
    for r in rows:
        for name in (*columns, *TAIL_COLUMNS):
            if not math.isnan(r[name]):
                metrics[f"{r['variant']}/{r['stage']}/{name}"] = r[name]
    ctx.tracker.log_metrics(metrics, step=0)
    return StageResult(
        outputs={k: str(v) for k, v in files.items()},
        metrics=metrics,
        extra={
            "report": {
                # NaN is not JSON: a metric an evaluation did not report is null in the manifest.
                "rows": [
                    {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                    for r in rows
                ],
                "curves": {k: sorted(v) for k, v in curves.items()},
                "parent_runs": parents,
                "mlflow_ui": ui,
            }
        },
    )
