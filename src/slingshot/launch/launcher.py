"""`slingshot launch`: run one stage node as a submitit job and see it through.

- Re-attach: if the work dir records a job that is still pending or running, wait on
  it instead of submitting another (Snakemake cannot; snakemake/snakemake#4084).
- Requeue: a stage that stopped after a checkpoint (USR2) is requeued by the job
  itself on Slurm (same id); on the local backends the launcher resubmits it.
- Resubmit: a job that ended without a result (cancelled, node failure, killed) is
  submitted again, up to ``launcher.max_resubmits`` times; the stage resumes from
  its newest complete checkpoint.
- The job's log is streamed into this process's stdout (the rule's log); a failed
  stage ends this process non-zero with the stage's error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from slingshot.config import PipelineConfig, Resources
from slingshot.io import atomic_write_text, private_dir
from slingshot.launch.cost import StageCost, measure_cost, write_cost
from slingshot.launch.job import DONE, REQUEUE, StageJob
from slingshot.launch.site import load_site, slurm_parameters
from slingshot.launch.state import LaunchState
from slingshot.plan import Node, Plan, build_plan, stage_config
from slingshot.tracking import Tracker, journal_file, server_problem
from slingshot.tracking.journal import Journal
from slingshot.validate import load_pipeline_config, tracking_problems

# Slurm states after which a job will not run again by itself.
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
_EXECUTOR = {"local": "local", "slurm": "slurm", "inprocess": "debug"}


class LaunchError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[slingshot launch {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- executors
def node_resources(cfg: PipelineConfig, node: Node) -> Resources:
    section = stage_config(cfg, node)
    return section.resources if section else cfg.launcher.default_resources


def make_executor(cfg: PipelineConfig, node: Node, folder: Path) -> submitit.Executor:
    res = node_resources(cfg, node)
    backend = cfg.launcher.backend
    private_dir(folder)
    site = load_site(cfg.launcher.site) if backend == "slurm" else None
    # On Slurm the job runs the site's Python (submitit's default is this process's).
    python = {"slurm_python": site.job_python()} if site else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=_EXECUTOR[backend], **python)
    params: dict[str, Any] = {
        "name": f"{cfg.pipeline.name}.{node.key.replace('/', '.')}",
        "timeout_min": res.time_min,
        "nodes": res.nodes,
        "tasks_per_node": res.effective_tasks_per_node,
        "gpus_per_node": res.gpus_per_node,
        "cpus_per_task": res.cpus_per_task,
    }
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    if site is not None:
        params.update(slurm_parameters(site, res))
        params["slurm_signal_delay_s"] = cfg.launcher.signal_delay_s
        # --requeue: the job requeues itself after a USR2 checkpoint (a site or stage flag may override it).
        params["slurm_additional_parameters"] = {"requeue": True, **params["slurm_additional_parameters"]}
    elif backend == "local":
        params["local_setup"] = list(res.setup)
    executor.update_parameters(**params)
    return executor


def slurm_state(job_id: str) -> str:
    """The job's state: squeue while Slurm still holds it (authoritative, and it shows a
    requeued job as PENDING), else sacct's final state, else UNKNOWN."""
    try:
        out = subprocess.run(
            ["squeue", "-j", job_id, "-h", "-o", "%T"], capture_output=True, text=True, timeout=30
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
        out = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
        if out.returncode == 0 and lines:
            return lines[-1].rstrip("+")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "UNKNOWN"


@dataclass
class RunningJob:
    """A submitted or re-attached job, for any backend."""

    backend: str
    job_id: str
    folder: Path
    job: Any | None = None  # the submitit job object when we submitted it in this process

    @property
    def paths(self) -> submitit.core.utils.JobPaths:
        return submitit.core.utils.JobPaths(self.folder, job_id=self.job_id, task_id=0)

    def alive(self) -> bool:
        if self.paths.result_pickle.exists():
            return False
        if self.backend == "slurm":
            # A job between squeue and accounting can read UNKNOWN for a moment: ask again.
            for _ in range(3):
                state = slurm_state(self.job_id)
                if state != "UNKNOWN":
                    return state not in ENDED
                time.sleep(1)
            return False
        if self.backend == "local":
            if self.job is not None:
                return self.job._process.poll() is None
            try:
                os.kill(int(self.job_id), 0)
            except (ProcessLookupError, ValueError):
                return False
            return not _is_zombie(int(self.job_id))
        return False

    def state(self) -> str:
        return (
            slurm_state(self.job_id) if self.backend == "slurm" else ("RUNNING" if self.alive() else "ENDED")
        )

    def cancel(self) -> None:
        if self.backend == "slurm":
            subprocess.run(["scancel", self.job_id], check=False, timeout=30)
        elif self.backend == "local":
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(self.job_id), 15)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


class LogStreamer:
    """Copies what the job appends to its stdout/stderr into ours."""

    def __init__(self, paths: list[Path]):
        self.offsets = dict.fromkeys(paths, 0)

    def pump(self) -> None:
        for path in self.offsets:
            if not path.exists():
                continue
            size = path.stat().st_size
            if size < self.offsets[path]:  # truncated (a restarted job): start over
                self.offsets[path] = 0
            if size == self.offsets[path]:
                continue
            with open(path, "rb") as handle:
                handle.seek(self.offsets[path])
                data = handle.read()
            self.offsets[path] += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


# --------------------------------------------------------------------------- launching
@dataclass
class Outcome:
    status: str  # done | requeue | failed | lost
    detail: str = ""


def _wait(running: RunningJob, poll_s: float) -> Outcome:
    """Stream logs until the job ends; classify how it ended."""
    if running.backend == "inprocess":
        result = running.job.result()  # runs the stage here (submitit's debug executor)
        return Outcome(result["status"])
    paths = running.paths
    streamer = LogStreamer([paths.stdout, paths.stderr])
    while running.alive():
        streamer.pump()
        time.sleep(poll_s)
    # The result file can land a moment after the job leaves the queue.
    for _ in range(10):
        if paths.result_pickle.exists():
            break
        time.sleep(min(poll_s, 1.0))
    streamer.pump()
    if not paths.result_pickle.exists():
        return Outcome("lost", f"job {running.job_id} ended ({running.state()}) without a result")
    kind, value = submitit.core.utils.pickle_load(paths.result_pickle)
    if kind == "success":
        return Outcome(value["status"], str(value))
    if running.backend == "slurm":
        # A stage that raised while Slurm was stopping its job (scancel, node failure,
        # preemption: SIGTERM reaches helper processes, e.g. dist_checkpointing's writers,
        # and the save in progress breaks) was stopped, not failed: resubmit it.
        state = _settled_slurm_state(running.job_id)
        if state in STOPPED:
            last = str(value).strip().splitlines()[-1:] or [""]
            return Outcome(
                "lost", f"job {running.job_id} was stopped ({state}); the stage then raised: {last[0]}"
            )
    return Outcome("failed", str(value))


# Slurm states of a job stopped from outside (not by its own error).
STOPPED = {"CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _settled_slurm_state(job_id: str, timeout_s: float = 30.0) -> str:
    """The job's state once Slurm has finished ending it (COMPLETING passes in seconds)."""
    deadline = time.monotonic() + timeout_s
    state = slurm_state(job_id)
    while state in ("COMPLETING", "RUNNING", "UNKNOWN") and time.monotonic() < deadline:
        time.sleep(1.0)
        state = slurm_state(job_id)
    return state


def _check_work_dir(cfg: PipelineConfig, node: Node) -> None:
    """A work dir made for another version of this stage's config is moved aside, never resumed."""
    work_dir = node.work_dir(cfg)
    marker = work_dir / "digest"
    if marker.is_file() and marker.read_text().strip() != node.digest:
        stale = work_dir.with_name(f"{work_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        say(f"config of {node.key} changed since its checkpoints were written: moving them to {stale}")
        shutil.move(str(work_dir), stale)
    private_dir(work_dir)
    if not marker.is_file():
        atomic_write_text(marker, node.digest + "\n")


# How long the launcher waits, after a job, for a tracking server that is down to send the
# rest of the stage's journal (it is sent by a later launch otherwise).
JOURNAL_WAIT_S = 120.0


def reopen_when_up(cfg: PipelineConfig, node: Node, wait_s: float) -> Tracker | None:
    """The stage's run, once the tracking server answers (None: it did not within ``wait_s``,
    or the stage never opened a run). Reopening sends what the journal still holds."""
    deadline = time.monotonic() + wait_s
    while server_problem(cfg.tracking_uri, timeout_s=5.0) is not None:
        if time.monotonic() >= deadline:
            return None
        time.sleep(2.0)
    work_dir = node.work_dir(cfg)
    return Tracker.reopen(cfg.tracking_uri, work_dir / "mlflow_run_id", journal_file(work_dir))


def after_job(cfg: PipelineConfig, node: Node, done: bool) -> None:
    """Once a job of the stage has ended: send what its journal still holds (the server was
    down when it ended) and, for the job that finished the stage, log what it cost."""
    work_dir = node.work_dir(cfg)
    try:
        pending = Journal(journal_file(work_dir)).pending
        tracker = reopen_when_up(cfg, node, JOURNAL_WAIT_S if pending else 5.0)
        cost = measure_cost(work_dir, node_resources(cfg, node)) if done else None
        if cost is not None:
            write_cost(work_dir, cost)
            say(f"{node.key} cost: {format_cost(cost)} ({cost.source})")
            if tracker is not None:
                tracker.log_metrics(cost.metrics(), step=0)
                tracker.set_tags({"slingshot.cost_source": cost.source})
        if pending and tracker is not None:
            say(f"{node.key}: sent the {pending} records its journal held when the job ended")
        if tracker is None or tracker.pending:
            say(
                f"{node.key}: the tracking server at {cfg.tracking_uri} is unreachable; the stage's "
                f"journal ({journal_file(work_dir)}) is sent by the next launch once it is back"
            )
    except Exception as error:  # noqa: BLE001 - bookkeeping after the job must not fail the stage
        say(f"{node.key}: could not finish its tracking after the job: {error}")


def send_pending_journals(cfg: PipelineConfig, plan: Plan) -> None:
    """Journals that finished stages of this pipeline could not send (the server was down when
    their job and its launcher ended) go now: the server answers, a launch has just checked.
    Only finished stages: a running job sends its own."""
    for other in plan.ordered():
        work_dir = other.work_dir(cfg)
        if not other.manifest_path(cfg).is_file() or not journal_file(work_dir).is_file():
            continue
        if Journal(journal_file(work_dir)).pending:
            tracker = Tracker.reopen(cfg.tracking_uri, work_dir / "mlflow_run_id", journal_file(work_dir))
            if tracker is not None:
                say(f"{other.key}: sent its journal's pending records ({tracker.pending} still pending)")


def format_cost(cost: StageCost) -> str:
    return (
        f"elapsed {cost.elapsed_s:.0f}s, {cost.gpu_hours:.4g} GPU-h, {cost.cpu_hours:.4g} CPU-h, "
        f"queue wait {cost.queue_wait_s:.0f}s, {cost.requeues} requeues, {cost.resubmits} resubmits"
    )


def launch(config_path: str | os.PathLike[str], variant: str, stage: str) -> int:
    cfg = load_pipeline_config(config_path)
    plan = build_plan(cfg)
    node = plan.node(variant, stage)
    manifest = node.manifest_path(cfg)
    if manifest.is_file():
        say(f"{node.key} is already done ({manifest})")
        return 0
    # The server went away after the DAG was built: wait out a restart, then fail here
    # rather than minutes into the job (MLflow's client retries for about 4 minutes).
    problems = tracking_problems(cfg, [Path(config_path)], wait_s=60.0)
    if problems:
        raise LaunchError("; ".join(problems))
    send_pending_journals(cfg, plan)
    _check_work_dir(cfg, node)
    work_dir = node.work_dir(cfg)
    folder = work_dir / "submitit"
    state = LaunchState.load(work_dir)
    backend = cfg.launcher.backend
    job_fn = StageJob(
        config_path=str(Path(config_path).resolve()),
        variant=node.owner or variant,
        stage=node.stage,
        cwd=str(Path.cwd()),
        max_requeues=cfg.launcher.max_requeues,
    )

    running: RunningJob | None = None
    current = state.current
    if current is not None and current.backend == backend and backend != "inprocess":
        candidate = RunningJob(backend, current.job_id, folder)
        if candidate.alive():
            say(f"re-attaching to {backend} job {current.job_id} of {node.key} (state {candidate.state()})")
            running = candidate
    executor = make_executor(cfg, node, folder)
    reason = "first" if not state.submissions else "resubmit"
    while True:
        if running is None:
            job = executor.submit(job_fn)
            state.add(job.job_id, backend, reason)
            running = RunningJob(backend, str(job.job_id), folder, job)
            say(f"submitted {node.key} as {backend} job {job.job_id} ({reason})")
        outcome = _wait(running, cfg.launcher.poll_interval_s)
        state.mark_ended(running.job_id)
        finished = outcome.status == DONE and manifest.is_file()
        if finished and backend == "slurm":
            _settled_slurm_state(running.job_id)  # accounting has the job's final elapsed time
        after_job(cfg, node, done=finished)
        if outcome.status == DONE:
            if not manifest.is_file():
                raise LaunchError(
                    f"{node.key}: job {running.job_id} finished but wrote no manifest at {manifest}"
                )
            say(f"{node.key} done (job {running.job_id})")
            return 0
        if outcome.status == "failed":
            say(f"{node.key} FAILED in job {running.job_id}:\n{outcome.detail}")
            return 1
        if outcome.status == REQUEUE:
            if state.count("requeue") >= cfg.launcher.max_requeues:
                say(
                    f"{node.key} stopped {state.count('requeue') + 1} times (launcher.max_requeues="
                    f"{cfg.launcher.max_requeues}); its checkpoint is kept: rerun to continue"
                )
                return 1
            reason = "requeue"
        else:  # lost: cancelled, node failure, killed
            if state.count("resubmit") >= cfg.launcher.max_resubmits:
                say(
                    f"{node.key}: {outcome.detail}; giving up after {cfg.launcher.max_resubmits} resubmissions "
                    f"(launcher.max_resubmits); logs in {folder}"
                )
                return 1
            say(f"{node.key}: {outcome.detail}; resubmitting (it resumes from its last checkpoint)")
            running.cancel()  # never two jobs on one work dir, should the old one come back
            reason = "resubmit"
        running = None


def launch_main(config_path: str, variant: str, stage: str) -> int:
    try:
        return launch(config_path, variant, stage)
    except Exception as error:  # the rule's log gets one clear line, not a traceback
        say(f"error: {error}")
        return 1
