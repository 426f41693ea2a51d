"""What a stage cost: elapsed time, GPU-hours, CPU-hours, queue wait, requeues, resubmits.

On Slurm from accounting (``sacct -D``: every run of every job of the stage, a requeued job's
earlier runs included), else from the local clock (launch.json's submission and end times
and the job's own start times in starts.jsonl) with the GPUs and CPUs the stage asked for.
The launcher computes it once the stage's job has ended, writes ``cost.json`` into the work
dir and logs it on the stage's MLflow run (``cost/*`` metrics); ``slingshot status --cost``
and the report read it, or compute it so far for a stage still running.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slingshot.config import Resources
from slingshot.io import atomic_write_json
from slingshot.launch.state import LaunchState, read_starts

COST_FILE = "cost.json"


@dataclass
class StageCost:
    source: str  # sacct | clock
    jobs: int  # job runs counted (a requeued Slurm job counts once per run)
    elapsed_s: float
    gpu_hours: float  # sum over runs of elapsed x GPUs allocated
    cpu_hours: float  # sum over runs of elapsed x CPUs allocated
    queue_wait_s: float  # sum over runs of start - submit (eligible time on Slurm)
    requeues: int  # the same job run again (USR2 checkpoint, node failure)
    resubmits: int  # a new job after one was lost (cancelled, killed)

    def metrics(self) -> dict[str, float]:
        return {f"cost/{key}": float(value) for key, value in asdict(self).items() if key != "source"}


class AccountingUnavailable(RuntimeError):
    pass


def parse_tres(tres: str) -> dict[str, str]:
    """``cpu=2,gres/gpu=1,mem=1G,node=1`` -> {"cpu": "2", "gres/gpu": "1", ...}."""
    return dict(item.split("=", 1) for item in tres.split(",") if "=" in item)


def gpus_in(tres: dict[str, str]) -> int:
    """GPUs of an AllocTRES: the untyped ``gres/gpu`` count (typed ones repeat it)."""
    value = tres.get("gres/gpu")
    if value is None:
        typed = [v for k, v in tres.items() if k.startswith("gres/gpu:")]
        value = typed[0] if typed else "0"
    return int(value)


def sacct_runs(job_ids: list[str]) -> list[dict[str, str]]:
    """One dict per run of each job (``sacct -D -X``), times as Unix seconds."""
    fields = ["JobIDRaw", "ElapsedRaw", "AllocTRES", "AllocCPUS", "Submit", "Start", "State"]
    try:
        out = subprocess.run(
            ["sacct", "-D", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SLURM_TIME_FORMAT": "%s"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AccountingUnavailable(f"sacct: {error}") from None
    if out.returncode != 0:
        raise AccountingUnavailable(f"sacct: {out.stderr.strip()[:300]}")
    runs = [dict(zip(fields, line.split("|"), strict=False)) for line in out.stdout.splitlines() if line]
    if not runs:
        raise AccountingUnavailable(f"sacct knows no job {', '.join(job_ids)}")
    return runs


def _seconds(value: str) -> float | None:
    return float(value) if value.isdigit() else None


def sacct_cost(job_ids: list[str], resubmits: int) -> StageCost:
    runs = sacct_runs(job_ids)
    now = time.time()
    elapsed = gpu_s = cpu_s = wait = 0.0
    for run in runs:
        seconds = float(run["ElapsedRaw"] or 0)
        tres = parse_tres(run["AllocTRES"])
        elapsed += seconds
        gpu_s += seconds * gpus_in(tres)
        cpu_s += seconds * int(run["AllocCPUS"] or tres.get("cpu", 0) or 0)
        submit, start = _seconds(run["Submit"]), _seconds(run["Start"])
        if submit is not None:
            wait += max((start if start is not None else now) - submit, 0.0)
    return StageCost(
        source="sacct",
        jobs=len(runs),
        elapsed_s=elapsed,
        gpu_hours=gpu_s / 3600,
        cpu_hours=cpu_s / 3600,
        queue_wait_s=wait,
        requeues=len(runs) - len(set(job_ids)),
        resubmits=resubmits,
    )


def clock_cost(work_dir: Path, state: LaunchState, resources: Resources) -> StageCost:
    """The local backends: each submission from its start (the job's own record, else the
    submission) to its end (as the launcher saw it, else now), at the resources asked for."""
    starts: dict[str, float] = {}
    for entry in read_starts(work_dir):
        starts.setdefault(str(entry["job_id"]), float(entry["started_at"]))
    now = time.time()
    elapsed = wait = 0.0
    for submission in state.submissions:
        started = starts.get(submission.job_id, submission.submitted_at)
        elapsed += max((submission.ended_at or now) - started, 0.0)
        wait += max(started - submission.submitted_at, 0.0)
    gpus = resources.nodes * resources.gpus_per_node
    cpus = resources.nodes * resources.effective_tasks_per_node * resources.cpus_per_task
    return StageCost(
        source="clock",
        jobs=len(state.submissions),
        elapsed_s=elapsed,
        gpu_hours=elapsed * gpus / 3600,
        cpu_hours=elapsed * cpus / 3600,
        queue_wait_s=wait,
        requeues=state.count("requeue"),
        resubmits=state.count("resubmit"),
    )


def measure_cost(work_dir: Path, resources: Resources) -> StageCost | None:
    """The stage's cost so far (None: never submitted). Slurm without accounting falls back
    to the clock."""
    state = LaunchState.load(work_dir)
    if not state.submissions:
        return None
    if state.submissions[-1].backend == "slurm":
        try:
            return sacct_cost(state.job_ids, state.count("resubmit"))
        except AccountingUnavailable:
            pass
    return clock_cost(work_dir, state, resources)


def write_cost(work_dir: Path, cost: StageCost) -> None:
    atomic_write_json(Path(work_dir) / COST_FILE, asdict(cost))


def read_cost(work_dir: Path) -> StageCost | None:
    path = Path(work_dir) / COST_FILE
    if not path.is_file():
        return None
    return StageCost(**json.loads(path.read_text()))
