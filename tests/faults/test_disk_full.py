"""A full disk under a REAL stage: the pipeline's work directory (checkpoints, job logs,
launch state) is a small tmpfs that holds the data stage's files and two of pretraining's
checkpoints but not a third. The save that fills it fails with an error naming the
checkpoint directory and the free space, the job and Snakemake exit non-zero, the partial
checkpoint is removed and the two complete ones are intact. With room made (the tmpfs
grown), a rerun resumes from the newest of them, does not recompute the data stage, and
ends with the same losses as an uninterrupted run.

Needs root (mount); skipped otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pipeline import launch_state
from real_pipeline import (
    INTERVAL,
    KEY,
    assert_matches_baseline,
    checkpoint_steps,
    loss_history,
    real_config,
    run_pretrain,
)

pytestmark = pytest.mark.slow


def _mount_tmpfs(directory: Path, size_bytes: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes // 1024}k,mode=0755", "tmpfs", str(directory)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def small_disk(tmp_path, pretrain_baseline):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    work = tmp_path / "work"
    # Two checkpoints and ~0.75 of a third: the third save runs out of space part-way.
    size = int(2.75 * pretrain_baseline["checkpoint_bytes"])
    try:
        _mount_tmpfs(work, size)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error.stderr.decode()[-300:]}")
    try:
        yield work
    finally:
        if subprocess.run(["umount", str(work)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(work)], check=False)


def test_full_disk_fails_clearly_and_keeps_the_last_checkpoint(tmp_path, small_disk, pretrain_baseline):
    work = small_disk
    config = real_config(tmp_path, "fault-disk", work_dir=work)
    out = run_pretrain(tmp_path, config)
    assert out.returncode != 0
    log = (tmp_path / "results" / "logs" / "main.pretrain-p1.log").read_text()
    ckpts = work / KEY / "checkpoints"
    full_at = 3 * INTERVAL
    assert f"no space left on device while writing checkpoint step {full_at} into {ckpts}" in log, log[-3000:]
    last = ckpts / f"step-{2 * INTERVAL:08d}"
    assert f"the last complete checkpoint ({last}) is intact" in log
    assert "FAILED" in log
    assert not (tmp_path / "results" / KEY / "manifest.json").exists()
    assert checkpoint_steps(work) == [INTERVAL, 2 * INTERVAL]
    assert not list(ckpts.glob(".tmp-step-*"))  # the partial checkpoint is gone
    data_manifest = tmp_path / "results" / "data" / "manifest.json"
    data_record = data_manifest.read_text()

    # Make room; the rerun resumes from the last complete checkpoint (which therefore loads).
    subprocess.run(["mount", "-o", "remount,size=256m", str(work)], check=True)
    out = run_pretrain(tmp_path, config)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (tmp_path / "results" / "logs" / "main.pretrain-p1.log").read_text()
    assert f"pretrain-p1: resumed from {last}" in log
    assert data_manifest.read_text() == data_record  # the data stage was not rerun
    assert len(launch_state(tmp_path, "data")["submissions"]) == 1
    worst = assert_matches_baseline(loss_history(tmp_path), pretrain_baseline, 1e-6)
    print(f"largest |loss - uninterrupted loss|: {worst:.3g}")
