"""Driving the real pipeline from tests: write a config, run or start Snakemake, watch jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from slingshot.config import deep_merge

REPO = Path(__file__).resolve().parents[2]
TOY_CONFIG = REPO / "tests" / "support" / "configs" / "toy.yaml"
BIN = Path(sys.executable).parent


def write_config(
    directory: Path,
    overrides: dict[str, Any] | None = None,
    variants: dict[str, Any] | None = None,
    base: Path = TOY_CONFIG,
) -> Path:
    """The toy config with ``overrides`` merged in and, if given, ``variants`` replacing its variants."""
    raw = deep_merge(yaml.safe_load(base.read_text()), overrides or {})
    if variants is not None:
        raw["variants"] = variants
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pipeline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "support"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["SLINGSHOT_SITE_DIR"] = str(REPO / "cluster")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def snakemake_cmd(directory: Path, config: Path, *args: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--configfile",
        str(config),
        "--directory",
        str(directory),
        "--cores",
        "4",
        "--latency-wait",
        "5",
        *args,
    ]


def run_snakemake(
    directory: Path, config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        snakemake_cmd(directory, config, *args),
        env=env or pipeline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_snakemake(
    directory: Path, config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start Snakemake in its own session, so the test can kill it and all its launchers at once."""
    log = open(directory / "snakemake.out", "a")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        snakemake_cmd(directory, config, *args),
        env=env or pipeline_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_session(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def events(directory: Path, key: str, rank: int = 0) -> list[dict[str, Any]]:
    path = directory / "work" / key / f"events.rank{rank}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def launch_state(directory: Path, key: str) -> dict[str, Any]:
    path = directory / "work" / key / "launch.json"
    return json.loads(path.read_text()) if path.is_file() else {"submissions": []}


def manifest(directory: Path, key: str) -> dict[str, Any]:
    return json.loads((directory / "results" / key / "manifest.json").read_text())


def slurm_jobs_named(name: str) -> list[str]:
    """Job ids whose name is ``name`` (sacct, last two hours)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,JobName", "-S", "now-2hours"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.split("|")[-1] == name]


def slurm_overrides(name: str, **stages: Any) -> dict[str, Any]:
    """A toy pipeline on the dev cluster's Slurm (site 'dev'), named uniquely so sacct finds
    exactly this run's jobs (job names are ``<pipeline>.<node>``)."""
    return {
        "pipeline": {"name": f"{name}-{uuid.uuid4().hex[:6]}"},
        "launcher": {"backend": "slurm", "site": "dev", "poll_interval_s": 1.0},
        "stages": stages,
    }
