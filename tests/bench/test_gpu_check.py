"""bench/gpu/check.py in its CPU mode: the script the GPU machine runs, kept from rotting.

CI has no GPU, so this runs every check at tiny sizes on CPU: each must finish and the
tables must name every check. (On a GPU machine the same script gives the GPU figures.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu" / "check.py"


@pytest.mark.slow
def test_every_check_runs_in_cpu_mode_and_is_tabled(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    names = [
        "matmul",
        "data",
        "megatron_step",
        "pretrain_stage",
        "sft_stage",
        "rlp_stage",
        "prorl_stage",
        "pytest_gpu",
    ]
    assert list(report["checks"]) == names
    assert all(row["status"] == "ok" for row in report["checks"].values()), report["checks"]
    checks = report["checks"]
    assert checks["megatron_step"]["result"]["1M"]["mcore_tokens_per_s"] > 0
    assert checks["prorl_stage"]["result"]["last"]["groups_trained"] > 0  # the update path ran
    assert {"time_generate_s", "time_score_s", "time_update_s"} <= set(
        checks["prorl_stage"]["result"]["mean_after_first"]
    )
    assert set(checks["rlp_stage"]["result"]["mean_after_first"]) == {
        "time_generate_s",
        "time_score_s",
        "time_update_s",
    }
    assert checks["pytest_gpu"]["result"]["skipped"] == checks["pytest_gpu"]["result"]["tests"] > 0
    table = (tmp_path / "check.md").read_text()
    assert all(f"| {name} | ok |" in table for name in names)


def test_without_a_gpu_it_asks_for_the_cpu_rehearsal(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the GPU run is the real one")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "no CUDA device: pass --cpu" in out.stderr
    assert not (tmp_path / "check.json").exists()
