"""Faults on a REAL stage on the dev Slurm cluster: the real data stage and the real
Megatron-Core pretraining stage (tests/support/real_pipeline.py), through Snakemake, the
launcher and sbatch. For each fault the pipeline completes, the finished data stage is not
recomputed (one Slurm job for it, its manifest unchanged), pretraining resumes from a
complete checkpoint, and every step's loss in MLflow is logged once and equals the
uninterrupted run's (CPU fp32: measured equal to the last bit; the tolerance is 1e-6).

(The same faults on the toy stage, plus re-attach, USR2 and node down, are in
test_launcher_slurm.py.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from pipeline import launch_state, slurm_jobs_named, start_snakemake, wait_for
from real_pipeline import (
    INTERVAL,
    KEY,
    assert_matches_baseline,
    checkpoint_steps,
    loss_history,
    manifest_of,
    pipeline_name,
    real_config,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TOLERANCE = 1e-6


def _data_done(directory: Path) -> str:
    """The data stage's manifest once written (its content: Snakemake touches the file)."""
    path = directory / "results" / "data" / "manifest.json"
    return path.read_text() if path.is_file() else ""


def _resumed_from(directory: Path) -> list[int]:
    log = (directory / "results" / "logs" / "main.pretrain-p1.log").read_text()
    return [int(s) for s in re.findall(r"pretrain-p1: resumed from \S*/step-(\d{8})", log)]


def _check_data_not_recomputed(directory: Path, config: Path, manifest: str) -> None:
    assert _data_done(directory) == manifest  # written once (finished_at, job ids unchanged)
    assert len(slurm_jobs_named(f"{pipeline_name(config)}.data")) == 1
    assert len(launch_state(directory, "data")["submissions"]) == 1


def test_cancelled_real_stage_resumes_and_matches_the_uninterrupted_run(tmp_path, pretrain_baseline):
    config = real_config(tmp_path, "fault-cancel", backend="slurm")
    proc = start_snakemake(tmp_path, config, "--until", "pretrain")
    data_manifest = wait_for(lambda: _data_done(tmp_path), 240, "the data stage")
    wait_for(
        lambda: any(s >= 2 * INTERVAL for s in checkpoint_steps(tmp_path / "work")), 240, "2 checkpoints"
    )
    first_job = launch_state(tmp_path, KEY)["submissions"][0]["job_id"]
    subprocess.run(["scancel", first_job], check=True)
    assert proc.wait(timeout=400) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]

    subs = launch_state(tmp_path, KEY)["submissions"]
    assert [s["reason"] for s in subs] == ["first", "resubmit"]
    resumed = _resumed_from(tmp_path)
    assert len(resumed) == 1 and resumed[0] >= 2 * INTERVAL and resumed[0] % INTERVAL == 0
    assert manifest_of(tmp_path, KEY)["slurm"]["restarts"] == 1
    _check_data_not_recomputed(tmp_path, config, data_manifest)
    worst = assert_matches_baseline(loss_history(tmp_path), pretrain_baseline, TOLERANCE)
    print(f"largest |loss - uninterrupted loss| over all steps: {worst:.3g}")


def test_job_killed_inside_a_checkpoint_save_resumes_from_the_previous_complete_one(
    tmp_path, pretrain_baseline
):
    held = 3 * INTERVAL
    config = real_config(tmp_path, "fault-killsave", backend="slurm")
    # The checkpoint manager's test hook: the save of step `held` stops after the stage wrote
    # its files and before COMPLETE, and says where (checkpoint.py's module docstring).
    env = {"SLINGSHOT_TEST_HOLD_SAVE": str(held)}
    from pipeline import pipeline_env

    proc = start_snakemake(tmp_path, config, "--until", "pretrain", env=pipeline_env(**env))
    data_manifest = wait_for(lambda: _data_done(tmp_path), 240, "the data stage")
    root = tmp_path / "work" / KEY / "checkpoints"
    marker = root / f".held-step-{held}"
    wait_for(marker.is_file, 300, f"the save of step {held} to be under way")
    partial, pid = marker.read_text().split()
    partial = Path(partial)
    written = [p for p in partial.rglob("*") if p.is_file()]
    assert written and not (partial / "COMPLETE").exists()  # half a checkpoint is on disk
    assert checkpoint_steps(tmp_path / "work") == [held - 2 * INTERVAL, held - INTERVAL]
    first_job = launch_state(tmp_path, KEY)["submissions"][0]["job_id"]
    os.kill(int(pid), signal.SIGKILL)  # the job's Python process, in the middle of the save
    assert proc.wait(timeout=400) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]

    subs = launch_state(tmp_path, KEY)["submissions"]
    assert [s["job_id"] for s in subs][0] == first_job
    assert [s["reason"] for s in subs] == ["first", "resubmit"]
    assert _resumed_from(tmp_path) == [held - INTERVAL]  # never the partial one
    assert not partial.exists() and not list(root.glob(".tmp-step-*"))
    log = (tmp_path / "results" / "logs" / "main.pretrain-p1.log").read_text()
    assert "without a result; resubmitting" in log
    _check_data_not_recomputed(tmp_path, config, data_manifest)
    worst = assert_matches_baseline(loss_history(tmp_path), pretrain_baseline, TOLERANCE)
    print(f"largest |loss - uninterrupted loss| over all steps: {worst:.3g}")
