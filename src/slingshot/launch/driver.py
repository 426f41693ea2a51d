"""`slingshot submit`: Snakemake itself as a small Slurm job that survives its own end.

- The driver job (submitit, on the site's ``driver:`` partition) runs Snakemake with every
  ``SLURM_*``/``SBATCH_*`` variable removed, so stage jobs submitted from inside it get their
  own resources, not the driver's (sbatch and srun read those variables as defaults).
- USR2 (``driver.signal_delay_s`` before the time limit): Snakemake is stopped (SIGINT to its
  process group: it and its launchers exit; stage jobs keep running) and the job requeues
  itself (same id, SLURM_RESTART_COUNT + 1), at most ``driver.max_requeues`` times. SIGTERM
  (scancel, preemption, a node going down) stops Snakemake the same way without a requeue:
  Slurm requeues a preempted job or one whose node failed, and a cancelled one stays ended.
- A restarted driver unlocks the directory (its Snakemake may have been killed) only while it
  holds the driver lock, clears the incomplete marks its stopped Snakemake left on stage
  manifests, and reruns Snakemake: launchers re-attach to running stage jobs, finished stages are skipped.
- One driver at a time: ``<work_dir>/driver/driver.json`` records the driver's job id. A second
  submit, or a plain Snakemake in the directory (common.smk asks ``driver_conflict``), is
  refused while that job is pending or running; the lock of an ended job is taken over.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from slingshot.config import PipelineConfig
from slingshot.io import atomic_write_json, private_dir
from slingshot.launch.launcher import ENDED, slurm_state
from slingshot.launch.site import DriverSection, job_setup_lines, load_site, site_file
from slingshot.validate import load_pipeline_config

DRIVER_ENV = "SLINGSHOT_DRIVER_JOB_ID"  # set in the Snakemake the driver runs
# Job environment a nested sbatch/srun would read as its own defaults.
INHERITED_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SUBMITIT_")


class SubmitError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[slingshot driver {time.strftime('%H:%M:%S')}] {message}", flush=True)


def clean_env(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without the variables of the job it runs in."""
    return {k: v for k, v in environ.items() if not k.startswith(INHERITED_PREFIXES)}


# --------------------------------------------------------------------------- the lock
@dataclass
class DriverLock:
    """``<work_dir>/driver/driver.json``: the driver job of this pipeline and its starts."""

    path: Path
    job_id: str
    submitted_at: float
    log: str
    args: list[str]
    previous_job_id: str | None = None  # the ended driver whose lock this one took over
    starts: list[dict[str, Any]] = field(default_factory=list)  # restart count, node, time

    @classmethod
    def load(cls, work_dir: Path) -> DriverLock | None:
        path = driver_dir(work_dir) / "driver.json"
        if not path.is_file():
            return None
        return cls(path=path, **json.loads(path.read_text()))

    def save(self) -> None:
        record = asdict(self)
        del record["path"]
        atomic_write_json(self.path, record)

    @property
    def requeues(self) -> int:
        return max((s["restart"] for s in self.starts), default=0)


def driver_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "driver"


def live_driver(work_dir: Path) -> tuple[DriverLock, str] | None:
    """The driver lock and its job's state while that job is pending or running."""
    lock = DriverLock.load(work_dir)
    if lock is None:
        return None
    state = slurm_state(lock.job_id)
    return None if state in ENDED or state == "UNKNOWN" else (lock, state)


def driver_conflict(work_dir: Path) -> str | None:
    """Why a Snakemake here must not run: another process's driver job holds the directory."""
    held = live_driver(work_dir)
    if held is None or os.environ.get(DRIVER_ENV) == held[0].job_id:
        return None
    lock, state = held
    return (
        f"this pipeline is driven by Slurm job {lock.job_id} ({state}, `slingshot submit`, lock "
        f"{lock.path}); follow it with `slingshot status`, stop it with `slingshot cancel`"
    )


# --------------------------------------------------------------------------- submitting
@dataclass
class Target:
    """What the Snakemake arguments say about where the pipeline lives."""

    directory: Path
    config_path: Path


def parse_target(args: list[str]) -> Target:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--directory", "-d")
    parser.add_argument("--snakefile", "-s", default="Snakefile")
    parser.add_argument("--configfile", "--configfiles", nargs="+")
    known, _ = parser.parse_known_args(args)
    directory = Path(known.directory or ".").resolve()
    if known.configfile:
        return Target(directory, Path(known.configfile[-1]))
    return Target(directory, Path(known.snakefile).resolve().parent / "workflow" / "config" / "config.yaml")


def sinfo_partitions() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SubmitError(f"sinfo failed ({out.stderr.strip()}): is this a Slurm cluster?")
    return sorted(set(out.stdout.split()))


def driver_section(site_name: str | None) -> tuple[DriverSection, Path]:
    """The site's driver section, refused (naming the key and the file) if unusable here."""
    path = site_file(site_name)
    section = load_site(site_name).driver
    if section is None or not section.partition:
        raise SubmitError(
            f"{path}: driver.partition is not set: add a `driver:` section naming the partition the "
            "driver job runs on (README, 'Run unattended')"
        )
    partitions = sinfo_partitions()
    if section.partition not in partitions:
        raise SubmitError(
            f"{path}: driver.partition '{section.partition}' is not a partition of this cluster "
            f"(sinfo: {', '.join(partitions)})"
        )
    return section, path


def driver_executor(cfg: PipelineConfig, section: DriverSection, folder: Path) -> submitit.AutoExecutor:
    """The driver job's executor. It runs the site's Python after the site's env and setup
    lines, like every stage job: Snakemake (and the stage launchers it starts) then use the
    environment the site declares, not whatever interpreter the login node submitted with."""
    site = load_site(cfg.launcher.site)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=site.job_python())
    executor.update_parameters(
        name=f"{cfg.pipeline.name}.driver",
        timeout_min=section.time_min,
        cpus_per_task=section.cpus_per_task,
        mem_gb=section.mem_gb,
        tasks_per_node=1,
        slurm_partition=section.partition,
        slurm_signal_delay_s=section.signal_delay_s,
        slurm_setup=job_setup_lines(site),
        slurm_additional_parameters={"requeue": True, **site.sbatch},
        **{f"slurm_{key}": value for key, value in (("account", site.account), ("qos", site.qos)) if value},
    )
    return executor


def submit(args: list[str]) -> DriverLock:
    """Submit the driver job; its lock (job id, log). Nothing is submitted when the input or the lock refuses."""
    target = parse_target(args)
    cfg = load_pipeline_config(target.config_path)
    section, _ = driver_section(cfg.launcher.site)
    work_dir = target.directory / cfg.work_dir
    held = live_driver(work_dir)
    if held is not None:
        raise SubmitError(
            f"refused: driver job {held[0].job_id} is {held[1]} for this pipeline ({held[0].path}); "
            "`slingshot cancel` it first"
        )
    stale = DriverLock.load(work_dir)
    if stale is not None:
        say(
            f"driver job {stale.job_id} has ended ({slurm_state(stale.job_id)}): taking over its lock "
            f"{stale.path}"
        )
    folder = private_dir(driver_dir(work_dir))
    executor = driver_executor(cfg, section, folder)
    job = executor.submit(
        DriverJob(
            args=list(args),
            cwd=str(Path.cwd()),
            work_dir=str(work_dir),
            max_requeues=section.max_requeues,
            stop_grace_s=section.stop_grace_s,
        )
    )
    log = submitit.core.utils.JobPaths(folder, job_id=job.job_id, task_id=0).stdout
    lock = DriverLock(
        path=folder / "driver.json",
        job_id=str(job.job_id),
        submitted_at=time.time(),
        log=str(log),
        args=list(args),
        previous_job_id=stale.job_id if stale else None,
    )
    lock.save()
    return lock


# --------------------------------------------------------------------------- the driver job
def incomplete_manifests(directory: Path) -> list[str]:
    """Stage manifests Snakemake marks incomplete: the rules of a stopped driver. The marks are
    never needed: a stage writes its manifest atomically, as its last act, so one that exists
    is complete (its stage finished while no driver ran) and one that does not is just missing.
    Left, they would stop the next Snakemake (IncompleteFilesException), even one whose stage
    finishes while it builds the DAG."""
    root = directory / ".snakemake" / "incomplete"
    if not root.is_dir():
        return []
    found = []
    for marker in root.rglob("*"):
        if not marker.is_file() or marker.name == "migration_underway":
            continue
        # Snakemake's file persistence names a marker by the urlsafe base64 of the output path
        # (split into '@'-prefixed directory parts when long).
        encoded = "".join(part.lstrip("@") for part in marker.relative_to(root).parts)
        try:
            path = base64.urlsafe_b64decode(encoded).decode()
        except ValueError:
            continue
        if Path(path).name == "manifest.json":
            found.append(path)
    return sorted(found)


@dataclass
class DriverJob:
    """Picklable: submitit runs it in the driver job, again after every requeue."""

    args: list[str]
    cwd: str
    work_dir: str
    max_requeues: int
    stop_grace_s: int

    def __call__(self) -> dict[str, Any]:
        os.chdir(self.cwd)
        job_id = os.environ["SLURM_JOB_ID"]
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        lock = DriverLock.load(Path(self.work_dir))
        if lock is None or lock.job_id != job_id:
            say(f"job {job_id} no longer holds the driver lock ({lock.job_id if lock else 'none'}): exiting")
            return {"status": "superseded"}
        lock.starts.append(
            {
                "restart": restart,
                "node": os.environ.get("SLURMD_NODENAME", socket.gethostname()),
                "at": time.time(),
            }
        )
        lock.save()
        say(f"driver job {job_id} start {restart} (requeue {restart} of at most {self.max_requeues})")
        if restart > self.max_requeues:
            raise RuntimeError(
                f"driver job {job_id} restarted {restart} times (driver.max_requeues={self.max_requeues}); "
                "run `slingshot submit` again to continue"
            )
        stop: list[str] = []
        signal.signal(signal.SIGUSR2, lambda *_: stop.append("requeue"))
        signal.signal(signal.SIGTERM, lambda *_: stop.append("stop"))
        env = {**clean_env(dict(os.environ)), DRIVER_ENV: job_id}
        directory = parse_target(self.args).directory
        locks = directory / ".snakemake" / "locks"
        if (restart > 0 or lock.previous_job_id) and locks.is_dir() and any(locks.iterdir()):
            # The previous driver's Snakemake was killed (node down, scancel) holding the lock.
            say("unlocking the working directory left locked by the previous driver")
            self._snakemake(["--unlock"], env)
        marked = incomplete_manifests(directory)
        if marked:
            done = [path for path in marked if (directory / path).is_file()]
            say(
                f"clearing the incomplete marks of {', '.join(marked)} (finished meanwhile: {', '.join(done) or '-'})"
            )
            self._snakemake(["--cleanup-metadata", *marked], env)
        proc = self._start(env)
        while proc.poll() is None and not stop:
            time.sleep(1.0)
        if proc.returncode is not None:
            say(f"snakemake exited with {proc.returncode}")
            if proc.returncode != 0:
                raise RuntimeError(f"snakemake exited with {proc.returncode}: see {lock.log}")
            return {"status": "done"}
        self._stop(proc)
        if stop[0] != "requeue":
            say(f"driver job {job_id} stopped (SIGTERM); stage jobs keep running")
            sys.exit(1)
        if restart >= self.max_requeues:
            raise RuntimeError(
                f"time limit: driver job {job_id} not requeued, it was requeued {restart} times "
                f"(driver.max_requeues={self.max_requeues}); `slingshot submit` continues"
            )
        say(f"time limit: requeueing driver job {job_id} (requeue {restart + 1}); stage jobs keep running")
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        # Slurm holds a requeued job ~2 minutes (BeginTime); nothing here needs the wait.
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=False, timeout=60)
        sys.exit(-1)  # no result: submitit's files stay as they are for the next start

    def _snakemake(self, extra: list[str], env: dict[str, str]) -> None:
        cmd = [sys.executable, "-m", "snakemake", *self.args, *extra]
        subprocess.run(cmd, env=env, check=False, timeout=600)

    def _start(self, env: dict[str, str]) -> subprocess.Popen:
        say(f"running snakemake {' '.join(self.args)}")

        def ignore_usr2() -> None:  # Slurm signals every process of the job; only the driver acts
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)

        return subprocess.Popen(
            [sys.executable, "-m", "snakemake", *self.args],
            env=env,
            start_new_session=True,
            preexec_fn=ignore_usr2,
        )

    def _stop(self, proc: subprocess.Popen) -> None:
        """SIGINT to Snakemake and its launchers (they exit; the stage jobs are untouched)."""
        say("stopping snakemake (stage jobs keep running)")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            say(f"snakemake did not stop within {self.stop_grace_s}s (driver.stop_grace_s): killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------- cancelling
def cancel(cfg: PipelineConfig) -> list[str]:
    """scancel the driver, then, once it can no longer resubmit anything, the pipeline's stage
    jobs still pending or running (only those in its work dirs' launch.json). Checkpoints stay.
    The ids cancelled."""
    from slingshot.launch.launcher import RunningJob
    from slingshot.launch.state import LaunchState
    from slingshot.plan import build_plan

    cancelled = []
    held = live_driver(cfg.work_dir)
    if held is not None:
        job_id = held[0].job_id
        subprocess.run(["scancel", job_id], check=True, timeout=60)
        deadline = time.monotonic() + 120
        while slurm_state(job_id) not in ENDED and time.monotonic() < deadline:
            time.sleep(1.0)
        cancelled.append(job_id)
        say(f"cancelled driver job {job_id} ({slurm_state(job_id)})")
    for node in build_plan(cfg).ordered():
        work_dir = node.work_dir(cfg)
        current = LaunchState.load(work_dir).current
        if current is None or current.backend != "slurm":
            continue
        job = RunningJob(current.backend, current.job_id, work_dir / "submitit")
        if job.alive():
            job.cancel()
            cancelled.append(current.job_id)
            say(f"cancelled {node.key} job {current.job_id}; its checkpoints in {work_dir} are kept")
    return cancelled
