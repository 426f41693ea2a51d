"""A full disk under a REAL stage.

- Checkpoints: the pipeline's work directory (checkpoints, job logs, launch state) is a
  small tmpfs that holds the data stage's files and two of pretraining's checkpoints but
  not a third. The save that fills it fails with an error naming the checkpoint directory
  and the free space, the job and Snakemake exit non-zero, the partial checkpoint is
  removed and the two complete ones are intact. With room made (the tmpfs grown), a rerun
  resumes from the newest of them, does not recompute the data stage, and ends with the
  same losses as an uninterrupted run.
- The data stage's final datasets: its output directory is a tmpfs that holds half of them.
  The stage fails with ``no space left on device (N of M bytes free) while writing
  results/data/<file>``, no manifest and no temp file is left, and with room made a rerun
  completes the stage.
- Final outputs: pretraining's output directory is a tmpfs that holds the final Megatron
  checkpoint but only half of the HF export. The export fails with ``no space left on
  device (N of M bytes free) while writing <output dir>/model``, nothing half-written is
  left beside the complete checkpoint, and with room made a rerun finishes the stage.

Needs root (mount); skipped otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pipeline import launch_state, run_snakemake
from real_pipeline import (
    INTERVAL,
    KEY,
    assert_matches_baseline,
    checkpoint_steps,
    loss_history,
    real_config,
    run_pretrain,
)
from stages import TINY_GPT

from slingshot.models.config import GPTModelConfig

pytestmark = pytest.mark.slow


def _mount_tmpfs(directory: Path, size_bytes: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes // 1024}k,mode=0755", "tmpfs", str(directory)],
        check=True,
        capture_output=True,
    )


def _small_tmpfs(directory: Path, size_bytes: int):
    """Mount a tmpfs of ``size_bytes`` on ``directory`` for the test; unmount after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        _mount_tmpfs(directory, size_bytes)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error.stderr.decode()[-300:]}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.fixture
def small_disk(tmp_path, pretrain_baseline):
    # Two checkpoints and ~0.75 of a third: the third save runs out of space part-way.
    yield from _small_tmpfs(tmp_path / "work", int(2.75 * pretrain_baseline["checkpoint_bytes"]))


@pytest.fixture
def small_output_disk(tmp_path, pretrain_baseline):
    # The final Megatron checkpoint (the size of a work-dir checkpoint) and half of the HF
    # export's weights (fp32): the export runs out of space part-way through its weights.
    hf_weights = 4 * GPTModelConfig(**TINY_GPT).num_parameters()
    size = pretrain_baseline["checkpoint_bytes"] + hf_weights // 2
    yield from _small_tmpfs(tmp_path / "results" / KEY, size)


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


def test_full_disk_during_the_hf_export_fails_clearly_and_leaves_nothing_half_written(
    tmp_path, small_output_disk, pretrain_baseline
):
    out_dir = small_output_disk
    config = real_config(tmp_path, "fault-export")
    out = run_pretrain(tmp_path, config)
    assert out.returncode != 0
    log = (tmp_path / "results" / "logs" / "main.pretrain-p1.log").read_text()
    assert "no space left on device (" in log, log[-3000:]
    assert f"bytes free) while writing results/{KEY}/model\n" in log, log[
        -3000:
    ]  # the config's relative path
    assert "FAILED" in log
    assert not (out_dir / "manifest.json").exists()
    # The complete final checkpoint and nothing else: no model dir, no half-written temp dir.
    assert sorted(p.name for p in out_dir.iterdir()) == ["mcore"]
    assert (out_dir / "mcore" / "COMPLETE").read_text() == f"global_step {len(pretrain_baseline['losses'])}\n"

    # Make room; the rerun resumes from the last checkpoint and writes both outputs.
    subprocess.run(["mount", "-o", "remount,size=256m", str(out_dir)], check=True)
    out = run_pretrain(tmp_path, config)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    from slingshot.models.hf import check_model_dir

    check_model_dir(out_dir / "model")
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json", "mcore", "model"]
    assert_matches_baseline(loss_history(tmp_path), pretrain_baseline, 1e-6)


@pytest.fixture
def small_data_disk(tmp_path, pretrain_baseline):
    # Half of what the data stage writes (datasets, tokenizer, manifest): it runs out part-way.
    yield from _small_tmpfs(tmp_path / "results" / "data", pretrain_baseline["data_bytes"] // 2)


def test_full_disk_while_the_data_stage_writes_its_datasets_fails_clearly(tmp_path, small_data_disk):
    import re

    out_dir = small_data_disk
    config = real_config(tmp_path, "fault-data-disk")
    out = run_snakemake(tmp_path, config, "--until", "data")
    assert out.returncode != 0
    log = (tmp_path / "results" / "logs" / "data.log").read_text()
    assert re.search(
        r"no space left on device \(\d+ of \d+ bytes free\) while writing results/data/\S+", log
    ), log[-3000:]
    assert "FAILED" in log
    assert not (out_dir / "manifest.json").exists()
    assert not [p for p in out_dir.rglob(".*") if p.name.endswith(".tmp") or p.is_dir()]  # no temp left

    subprocess.run(["mount", "-o", "remount,size=256m", str(out_dir)], check=True)
    out = run_snakemake(tmp_path, config, "--until", "data")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (out_dir / "manifest.json").is_file()
