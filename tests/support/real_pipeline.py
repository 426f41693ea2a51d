"""A real two-stage pipeline for fault-injection tests: the real data stage (small) and
the real Megatron-Core pretraining stage (a 2-layer, 64-wide GPT, 96 steps of 8 sequences
of 64 tokens, a checkpoint every 4 steps), run through Snakemake and the launcher.

On this 2-core box the whole pipeline takes about 40 s from a clean directory: the data
stage ~10 s, pretraining ~12 s of start-up and ~0.15 s a step. Faults are aimed at
pretraining; the data stage is what must never be recomputed.

``baseline_losses`` runs it once, uninterrupted, on the local backend (cached per
directory); fault tests compare every step's loss in MLflow against it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml
from pipeline import pipeline_env, run_snakemake, snakemake_cmd
from stages import SMALL_DATA, TINY_GPT

KEY = "main/pretrain-p1"
STEPS = 96
INTERVAL = 4
PRETRAIN: dict[str, Any] = {
    "model": TINY_GPT,
    "total_tokens": STEPS * 8 * 64,
    "micro_batch_size": 4,
    "global_batch_size": 8,
    "log_every": 1,
    "optimizer": {"lr": 0.003, "warmup_steps": 2},
    "phases": [{"name": "p1", "token_fraction": 1.0, "blend": {"general": 0.8, "reasoning": 0.2}}],
    "checkpoint": {"interval_steps": INTERVAL},
    "resources": {"cpus_per_task": 1, "time_min": 15},
}


def real_config(
    directory: Path,
    name: str,
    backend: str = "local",
    tracking_uri: str | None = None,
    work_dir: Path | None = None,
) -> Path:
    """data -> pretrain-p1 (the other stages exist in the DAG but the tests stop at pretrain)."""
    directory.mkdir(parents=True, exist_ok=True)
    launcher: dict[str, Any] = {"backend": backend, "poll_interval_s": 0.5, "max_resubmits": 2}
    if backend == "slurm":
        launcher.update(site="dev", poll_interval_s=1.0)
    raw: dict[str, Any] = {
        "pipeline": {"name": f"{name}-{uuid.uuid4().hex[:6]}"},
        "launcher": launcher,
        "data": SMALL_DATA,
        "stages": {"pretrain": PRETRAIN},
        "variants": {"main": {}},
    }
    if tracking_uri:
        raw["tracking"] = {"uri": tracking_uri}
    if work_dir is not None:
        raw["pipeline"]["work_dir"] = str(work_dir)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pipeline_name(config: Path) -> str:
    return yaml.safe_load(config.read_text())["pipeline"]["name"]


def run_pretrain(directory: Path, config: Path, timeout: float = 600, **env: str):
    return run_snakemake(directory, config, "--until", "pretrain", env=pipeline_env(**env), timeout=timeout)


def unlock(directory: Path, config: Path) -> None:
    subprocess.run(
        [*snakemake_cmd(directory, config), "--unlock"], env=pipeline_env(), check=True, capture_output=True
    )


def manifest_of(directory: Path, key: str) -> dict[str, Any]:
    return json.loads((directory / "results" / key / "manifest.json").read_text())


def loss_history(directory: Path, key: str = KEY, uri: str | None = None) -> list[tuple[int, float]]:
    """(step, loss) pairs of the stage's MLflow run, as logged (duplicates kept)."""
    from mlflow import MlflowClient

    m = manifest_of(directory, key)
    client = MlflowClient(uri or f"sqlite:///{directory}/results/mlflow.db")
    return sorted((h.step, h.value) for h in client.get_metric_history(m["mlflow_run_id"], "loss"))


def checkpoint_steps(work_dir: Path, key: str = KEY) -> list[int]:
    root = work_dir / key / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        int(p.name.split("-")[1])
        for p in root.iterdir()
        if p.name.startswith("step-") and (p / "COMPLETE").is_file()
    )


def baseline_losses(directory: Path) -> dict[str, Any]:
    """The uninterrupted run: every step's loss, the final manifest metrics, the size of one
    checkpoint and of the data stage's outputs (the full-disk tests size their filesystems from them)."""
    cache = directory / "baseline.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    run_dir = directory / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = real_config(run_dir, "baseline")
    out = run_pretrain(run_dir, config)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    history = loss_history(run_dir)
    ckpt = run_dir / "work" / KEY / "checkpoints" / f"step-{STEPS:08d}"
    result = {
        "losses": {str(step): value for step, value in history},
        "metrics": manifest_of(run_dir, KEY)["metrics"],
        "checkpoint_bytes": sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()),
        # The data stage's final outputs (the disk-full test of the data stage sizes from it).
        "data_bytes": sum(f.stat().st_size for f in (run_dir / "results" / "data").rglob("*") if f.is_file()),
    }
    cache.write_text(json.dumps(result))
    return result


def assert_matches_baseline(history: list[tuple[int, float]], baseline: dict[str, Any], tol: float) -> float:
    """Every step logged exactly once, each loss within ``tol`` of the uninterrupted run's;
    returns the largest absolute difference seen."""
    steps = [step for step, _ in history]
    assert steps == list(range(1, STEPS + 1)), f"steps logged: {steps}"
    worst = 0.0
    for step, value in history:
        diff = abs(value - baseline["losses"][str(step)])
        worst = max(worst, diff)
        assert diff <= tol, (step, value, baseline["losses"][str(step)])
    return worst
