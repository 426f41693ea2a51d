"""`slingshot status`: where every stage of the pipeline stands, while it runs and after.

One row per variant x stage node (a node shared between variants shows in each, marked
with its owner). Everything is read from files the pipeline already keeps, so it needs
no daemon and works from any shell in the pipeline's directory:

- state: ``done`` when the manifest exists; otherwise the launcher's record
  (``launch.json`` in the work dir) names the current job, which is asked whether it is
  alive (squeue/sacct on Slurm, the pid locally): ``running`` / ``pending``; a job that
  ended without a manifest is ``failed`` (its result file holds the error), ``stopped``
  (it checkpointed and asked to be requeued) or ``lost`` (no result at all: killed,
  cancelled, node failure); no record at all: ``not started``.
- job id, restarts (submissions after the first + Slurm requeues), elapsed time,
- the training loop's progress (step i/N, percent, ETA: ``progress.json`` in the work dir),
- the latest value of the stage's key metric and the MLflow run id; for a finished
  evaluation also each benchmark's pass@1 (``bench/<name>/pass_at_1`` in its manifest).

``--cost`` adds the cost table: per stage the elapsed time, GPU-hours, CPU-hours, queue wait,
requeues and resubmits (sacct on Slurm, else the clock; :mod:`slingshot.launch.cost`).

Above the table, the `slingshot submit` driver job when there is one (its lock file in
``<work_dir>/driver``): job id, Slurm state, requeues, elapsed, node and log.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slingshot.config import PipelineConfig
from slingshot.launch.state import LaunchState
from slingshot.plan import Node, build_plan
from slingshot.tracking.key_metrics import pick_metric
from slingshot.train.logging import read_progress
from slingshot.validate import ConfigError, load_pipeline_config
from slingshot.workflow import RESOLVED_NAME

DEFAULT_CONFIG = Path("workflow/config/config.yaml")


@dataclass
class StageStatus:
    variant: str
    node: Node
    state: str
    job_id: str = ""
    backend: str = ""
    restarts: int = 0
    elapsed_s: float | None = None
    run_id: str | None = None
    metric: str | None = None
    value: float | None = None
    step: int | None = None
    detail: str = ""
    benchmarks: dict[str, float] = field(default_factory=dict)  # benchmark name -> pass@1 (evaluations)
    progress: dict[str, Any] | None = None  # the training loop's progress.json (running stages)

    @property
    def stage(self) -> str:
        return self.node.stage

    @property
    def shared_from(self) -> str | None:
        return self.node.owner if self.node.owner and self.node.owner != self.variant else None


def default_config_path() -> Path:
    """The config of the last DAG build (what the jobs run), else the embedded recipe."""
    resolved = Path("work") / RESOLVED_NAME
    return resolved if resolved.is_file() else DEFAULT_CONFIG


# --------------------------------------------------------------------------- states
def _job_state(cfg: PipelineConfig, node: Node, launch: LaunchState) -> tuple[str, str]:
    """(state, detail) of a node without a manifest, from its current job."""
    from submitit.core.utils import pickle_load

    from slingshot.launch.launcher import RunningJob

    current = launch.current
    if current is None:
        return "not started", ""
    job = RunningJob(current.backend, current.job_id, node.work_dir(cfg) / "submitit")
    if current.backend == "inprocess":
        # The debug executor runs inside the launcher and leaves no result file to read.
        return "unknown", "in-process job: see the Snakemake log"
    if job.alive():
        state = job.state().lower() if current.backend == "slurm" else "running"
        return ("pending" if state in ("pending", "requeued", "configuring") else "running"), state
    result = job.paths.result_pickle
    if result.is_file():
        try:
            kind, value = pickle_load(result)
        except Exception as error:  # a half-written pickle of a job that is just ending
            return "unknown", f"unreadable result: {error}"
        if kind == "error":
            lines = [line for line in str(value).strip().splitlines() if line.strip()]
            return "failed", lines[-1] if lines else "error"
        if isinstance(value, dict) and value.get("status") == "requeue":
            return (
                "stopped",
                f"checkpointed at step {value.get('step')} ({value.get('signal')}); rerun resumes",
            )
        return "failed", "job finished but wrote no manifest"
    detail = f"job {current.job_id} ended without a result"
    if current.backend == "slurm":
        detail += f" ({job.state()})"
    return "lost", detail


def _ended_at(cfg: PipelineConfig, node: Node, launch: LaunchState) -> float | None:
    current = launch.current
    if current is None:
        return None
    from slingshot.launch.launcher import RunningJob

    paths = RunningJob(current.backend, current.job_id, node.work_dir(cfg) / "submitit").paths
    times = [p.stat().st_mtime for p in (paths.result_pickle, paths.stdout, paths.stderr) if p.exists()]
    return max(times) if times else None


def node_status(cfg: PipelineConfig, node: Node, variant: str) -> StageStatus:
    manifest_path = node.manifest_path(cfg)
    launch = LaunchState.load(node.work_dir(cfg))
    current = launch.current
    status = StageStatus(
        variant=variant,
        node=node,
        state="",
        job_id=current.job_id if current else "",
        backend=current.backend if current else "",
        restarts=launch.restarts,
    )
    run_id_file = node.work_dir(cfg) / "mlflow_run_id"
    if run_id_file.is_file():
        status.run_id = run_id_file.read_text().strip() or None
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        status.state = "done"
        status.elapsed_s = manifest.get("wall_time_s")
        status.restarts = int(manifest.get("slurm", {}).get("restarts", status.restarts))
        status.run_id = manifest.get("mlflow_run_id") or status.run_id
        status.benchmarks = benchmark_pass_at_1(manifest.get("metrics", {}))
        return status
    status.state, status.detail = _job_state(cfg, node, launch)
    if status.state in ("running", "stopped", "failed", "lost"):
        status.progress = read_progress(node.work_dir(cfg))
    started = launch.first_submitted_at
    if started is not None:
        end = time.time() if status.state in ("running", "pending") else _ended_at(cfg, node, launch)
        status.elapsed_s = (end - started) if end else None
    return status


def benchmark_pass_at_1(metrics: dict[str, float]) -> dict[str, float]:
    """{benchmark: pass@1} from an evaluation's ``bench/<name>/pass_at_1`` metrics."""
    return {
        key.split("/")[1]: value
        for key, value in metrics.items()
        if key.startswith("bench/") and key.endswith("/pass_at_1") and key.count("/") == 2
    }


def collect_status(cfg: PipelineConfig, with_metrics: bool = True) -> list[StageStatus]:
    """Rows in recipe order: per variant, data, its stages (shared ones included), report."""
    plan = build_plan(cfg)
    ordered = plan.ordered()
    cache: dict[str, StageStatus] = {}
    rows: list[StageStatus] = []
    for variant in cfg.variants:
        for node in ordered:
            if variant not in node.variants:
                continue
            if node.key not in cache:
                cache[node.key] = node_status(cfg, node, variant)
            base = cache[node.key]
            rows.append(base if base.variant == variant else _copy_for(base, variant))
    if with_metrics:
        add_metrics(cfg, list(cache.values()))
        for row in rows:
            base = cache[row.node.key]
            row.metric, row.value, row.step = base.metric, base.value, base.step
            row.restarts, row.detail = base.restarts, base.detail
    return rows


def _copy_for(status: StageStatus, variant: str) -> StageStatus:
    copy = StageStatus(**{**status.__dict__})
    copy.variant = variant
    return copy


# --------------------------------------------------------------------------- metrics
def _tracking_client(cfg: PipelineConfig) -> Any | None:
    uri = cfg.tracking_uri
    # Opening a SQLite store that does not exist would create (and migrate) an empty one.
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    from mlflow import MlflowClient

    from slingshot.tracking import export_credentials

    export_credentials(cfg.tracking.credentials_file)  # a server with authentication

    return MlflowClient(tracking_uri=uri)


def add_metrics(cfg: PipelineConfig, statuses: list[StageStatus]) -> None:
    """The latest value (and its step) of each stage's key metric, from its MLflow run."""
    with_runs = [s for s in statuses if s.run_id]
    if not with_runs:
        return
    try:
        client = _tracking_client(cfg)
    except Exception as error:  # status must still print when the tracking server is down
        for s in with_runs:
            s.detail = s.detail or f"MLflow unavailable: {error}"
        return
    if client is None:
        return
    for s in with_runs:
        try:
            run = client.get_run(s.run_id)
        except Exception:
            continue
        # The job tags its run with submissions + Slurm requeues (SLURM_RESTART_COUNT) when it
        # starts: a requeued Slurm job keeps its id, so launch.json alone cannot count those.
        tagged = run.data.tags.get("slingshot.restarts", "")
        if tagged.isdigit() and s.state != "done":
            s.restarts = max(s.restarts, int(tagged))
        name = pick_metric(s.node.kind, list(run.data.metrics))
        if name is None:
            continue
        history = client.get_metric_history(s.run_id, name)
        if history:
            last = max(history, key=lambda m: (m.step, m.timestamp))
            s.metric, s.value, s.step = name, last.value, last.step


# --------------------------------------------------------------------------- the driver
@dataclass
class DriverStatus:
    """The `slingshot submit` job of this pipeline, from its lock file and Slurm."""

    job_id: str
    state: str
    requeues: int
    elapsed_s: float
    node: str
    log: str


def driver_status(cfg: PipelineConfig) -> DriverStatus | None:
    from slingshot.launch.driver import DriverLock
    from slingshot.launch.launcher import ENDED, slurm_state

    lock = DriverLock.load(cfg.work_dir)
    if lock is None:
        return None
    state = slurm_state(lock.job_id)
    log = Path(lock.log)
    end = time.time() if state not in ENDED and state != "UNKNOWN" else None
    if end is None:
        end = log.stat().st_mtime if log.is_file() else lock.path.stat().st_mtime
    node = lock.starts[-1]["node"] if lock.starts else ""
    return DriverStatus(lock.job_id, state, lock.requeues, end - lock.submitted_at, node, lock.log)


def render_driver(driver: DriverStatus) -> str:
    return (
        f"driver: slurm:{driver.job_id}  [bold]{driver.state}[/]  requeues {driver.requeues}  "
        f"elapsed {format_elapsed(driver.elapsed_s)}  node {driver.node or '-'}  log {driver.log}"
    )


# --------------------------------------------------------------------------- printing
STATE_STYLE = {
    "done": "green",
    "running": "cyan",
    "pending": "yellow",
    "stopped": "yellow",
    "failed": "bold red",
    "lost": "red",
    "not started": "dim",
    "unknown": "magenta",
}


def format_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(progress: dict[str, Any] | None, running: bool) -> str:
    """``37/96 (39%) ETA 0:12:00`` (the ETA counted down since the job wrote it)."""
    if not progress or not progress.get("total"):
        return ""
    step, total = int(progress["step"]), int(progress["total"])
    text = f"{step}/{total} ({100 * step / total:.0f}%)"
    eta = progress.get("eta_s")
    if running and eta is not None and step < total:
        left = max(float(eta) - (time.time() - float(progress.get("updated_at", time.time()))), 0.0)
        text += f" ETA {format_elapsed(left)}"
    return text


def render_table(cfg: PipelineConfig, rows: list[StageStatus]) -> Any:
    from rich.table import Table

    table = Table(title=f"slingshot: {cfg.pipeline.name}  ({cfg.tracking_uri})", title_justify="left")
    columns = (
        "variant",
        "stage",
        "state",
        "job",
        "restarts",
        "elapsed",
        "progress",
        "key metric",
        "mlflow run",
    )
    for column in columns:
        table.add_column(column, no_wrap=column in ("stage", "mlflow run", "job", "progress"))
    for r in rows:
        stage = r.stage + (f" (= {r.shared_from})" if r.shared_from else "")
        state = f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]"
        if r.detail and r.state not in ("done", "running"):
            state += f"\n[dim]{r.detail[:80]}[/]"
        job = f"{r.backend}:{r.job_id}" if r.job_id else ""
        metric = f"{r.metric}={r.value:.4g} @{r.step}" if r.metric is not None and r.value is not None else ""
        if r.benchmarks:
            metric += "".join(f"\n{name} pass@1={value:.4g}" for name, value in r.benchmarks.items())
        table.add_row(
            r.variant or "-",
            stage,
            state,
            job,
            str(r.restarts),
            format_elapsed(r.elapsed_s),
            format_progress(r.progress, r.state == "running"),
            metric,
            r.run_id or "",
        )
    return table


def render_cost(cfg: PipelineConfig) -> Any:
    """The cost table (:func:`slingshot.report_table.cost_rows`): what each stage cost, or so far."""
    from rich.table import Table

    from slingshot.report_table import COST_COLUMNS, cost_rows

    table = Table(title=f"cost: {cfg.pipeline.name}", title_justify="left")
    headers = {
        "elapsed_s": "elapsed",
        "gpu_hours": "GPU-h",
        "cpu_hours": "CPU-h",
        "queue_wait_s": "queue wait",
    }
    for column in COST_COLUMNS:
        table.add_column(headers.get(column, column), no_wrap=True)
    for row in cost_rows(cfg, build_plan(cfg)):
        cells = []
        for column in COST_COLUMNS:
            value = row[column]
            if column in ("elapsed_s", "queue_wait_s"):
                cells.append(format_elapsed(value))
            elif isinstance(value, float):
                cells.append(f"{value:.4f}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    return table


def print_status(config_path: str | None, cost: bool = False) -> int:
    """Print the table (and with ``cost`` the cost table); 2 on a config error, else 0
    (failures are shown, not an exit code)."""
    import sys

    from rich.console import Console

    path = Path(config_path) if config_path else default_config_path()
    try:
        cfg = load_pipeline_config(path)
    except (ConfigError, FileNotFoundError) as error:
        print(f"slingshot status: {error}", file=sys.stderr)
        return 2
    rows = collect_status(cfg)
    console = Console(width=max(Console().width, 160))
    driver = driver_status(cfg)
    if driver is not None:
        console.print(render_driver(driver), soft_wrap=True)
    console.print(render_table(cfg, rows))
    if cost:
        console.print(render_cost(cfg))
    counts: dict[str, int] = {}
    for r in {r.node.key: r for r in rows}.values():
        counts[r.state] = counts.get(r.state, 0) + 1
    console.print("  ".join(f"{state}: {n}" for state, n in sorted(counts.items())) + f"   (config: {path})")
    return 0
