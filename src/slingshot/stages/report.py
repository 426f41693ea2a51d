"""Report stage: one comparison across stages and variants (SPEC §6).

Reads every evaluation manifest (its upstream) and writes to ``results/report/``:

- ``table.csv`` / ``table.md``: one row per variant x evaluated stage, in recipe order
  (pretrain, rlp, sft, prorl), with pass@1, pass@k, mean response length, parse rate;
- ``benchmarks.csv`` / ``benchmarks.md`` (when ``stages.evaluate.benchmarks`` is set): one
  row per variant x evaluated stage x benchmark, with the same columns;
- ``pass_at_1.png``: pass@1 by stage, one line per variant;
- ``curves.png``: each training stage's key metric over its steps, read from MLflow via
  the run ids in the stage manifests (metric names are looked up, not assumed: a stage
  that logs no known key metric shows its first one);
- ``mlflow-ui.png`` / ``mlflow-ui-run.png``: screenshots of the MLflow UI's runs page and
  of a stage run's page, after checking that the UI shows each stage run under its parent
  with its dataset inputs (slingshot.report_ui; by default when Chromium is installed,
  ``SLINGSHOT_REPORT_MLFLOW_UI=0`` turns it off, ``=1`` requires it).

The table is built by :mod:`slingshot.report_table`, the figures by
:mod:`slingshot.report_plots`. Everything is logged as artifacts of the report run and of
EVERY variant's parent run, and each parent run gets ``eval.<metric>`` metrics at step =
the stage's index in the recipe, so MLflow's own charts compare variants stage by stage
(``eval.bench/<name>/<metric>`` for the benchmarks).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from slingshot.config import MODEL_CHAIN, PipelineConfig
from slingshot.context import StageContext, StageResult
from slingshot.io import atomic_write_text
from slingshot.plan import build_plan
from slingshot.report_plots import fetch_curves, plot_curves, plot_pass_at_1, training_runs
from slingshot.report_table import (
    BASE_COLUMNS,
    BENCH_BASE_COLUMNS,
    COST_COLUMNS,
    TAIL_COLUMNS,
    benchmark_rows,
    cost_rows,
    k_columns,
    table_csv,
    table_md,
    table_rows,
)
from slingshot.report_ui import screenshot_runs_page, ui_wanted


def parent_run_ids(cfg: PipelineConfig) -> dict[str, str]:
    out = {}
    for variant in cfg.variants:
        path = cfg.work_dir / variant / "mlflow_parent_run_id"
        if path.is_file() and path.read_text().strip():
            out[variant] = path.read_text().strip()
    return out


def metric_prefix(row: dict[str, Any]) -> str:
    """'' for a stage's row, ``bench/<name>/`` for a benchmark row."""
    return f"bench/{row['benchmark']}/" if "benchmark" in row else ""


def json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN is not JSON: a metric an evaluation did not report is null in the manifest."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


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
            if "benchmark" not in r:
                positions.append(f"{step}:{r['stage']}")
            for name in (*columns, *TAIL_COLUMNS):
                if not math.isnan(r[name]):
                    metrics.append(Metric(f"eval.{metric_prefix(r)}{name}", r[name], now, step))
        tags = [RunTag("slingshot.eval_steps", ",".join(positions))]
        client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.pipeline
    plan = build_plan(cfg)
    out = ctx.output_dir
    columns = k_columns(cfg)
    rows = table_rows(cfg, plan, ctx.upstream)
    bench = benchmark_rows(cfg, plan, ctx.upstream)
    all_columns = [*BASE_COLUMNS, *columns, *TAIL_COLUMNS]
    files = {
        "table_csv": out / "table.csv",
        "table_md": out / "table.md",
        "pass_at_1_png": out / "pass_at_1.png",
        "curves_png": out / "curves.png",
    }
    if bench:
        files |= {"benchmarks_csv": out / "benchmarks.csv", "benchmarks_md": out / "benchmarks.md"}
    files |= {"cost_csv": out / "cost.csv", "cost_md": out / "cost.md"}
    if not ctx.dist.is_main:
        return StageResult(outputs={k: str(v) for k, v in files.items()})
    atomic_write_text(files["table_csv"], table_csv(rows, all_columns))
    atomic_write_text(files["table_md"], table_md(rows, all_columns))
    if bench:
        bench_columns = [*BENCH_BASE_COLUMNS, *columns, *TAIL_COLUMNS]
        atomic_write_text(files["benchmarks_csv"], table_csv(bench, bench_columns))
        atomic_write_text(files["benchmarks_md"], table_md(bench, bench_columns))
    # What every stage cost (this report's own job is still running: not counted).
    costs = cost_rows(cfg, plan, skip=tuple(n.key for n in plan.ordered() if n.kind == "report"))
    atomic_write_text(files["cost_csv"], table_csv(costs, list(COST_COLUMNS)))
    atomic_write_text(files["cost_md"], table_md(costs, list(COST_COLUMNS)))
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
        log_to_parents(ctx.tracker.client, parents, rows + bench, list(files.values()), columns)

    metrics: dict[str, float] = {}
    for r in rows + bench:
        for name in (*columns, *TAIL_COLUMNS):
            if not math.isnan(r[name]):
                metrics[f"{r['variant']}/{r['stage']}/{metric_prefix(r)}{name}"] = r[name]
    ctx.tracker.log_metrics(metrics, step=0)
    return StageResult(
        outputs={k: str(v) for k, v in files.items()},
        metrics=metrics,
        extra={
            "report": {
                "rows": json_rows(rows),
                "benchmark_rows": json_rows(bench),
                "cost_rows": costs,
                "curves": {k: sorted(v) for k, v in curves.items()},
                "parent_runs": parents,
                "mlflow_ui": ui,
            }
        },
    )
