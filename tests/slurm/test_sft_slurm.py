"""The SFT stage as a 2-node Slurm job on the dev cluster (n1 + n2, one task each, gloo,
submitted through submitit like the launcher does): the same steps, losses and final
weights as one process taking the same global batch with gradient accumulation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from slingshot.models.hf import load_model_and_tokenizer

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WORKER_DIR = REPO / "tests" / "unit" / "stages"
sys.path.insert(0, str(WORKER_DIR))

from sft_worker import TINY, run_distributed, run_stage, synth_dataset  # noqa: E402


def test_two_node_sft_matches_one_process(small_data, tmp_path, monkeypatch):
    import submitit
    from stages import tiny_model_dir

    model_dir = tiny_model_dir(tmp_path / "init", Path(small_data["outputs"]["tokenizer_dir"]))
    dataset = synth_dataset(tmp_path / "synth", small_data["outputs"]["tasks_train"], 80)
    upstream = {
        "data": small_data,
        "synth": {"kind": "synth", "key": "synth", "outputs": {"dataset": str(dataset)}},
    }

    def spec(name: str, **overrides: object) -> dict:
        return {
            "root": str(tmp_path / name),
            "overrides": {**TINY, **overrides},
            "upstream": upstream,
            "init_model": str(model_dir),
        }

    # 1 process: micro-batches of 2 rows, 2 accumulated = 4 rows per step.
    one = run_stage(spec("one"))
    # 2 Slurm tasks on two nodes: 2 rows each = the same 4 rows per step.
    pythonpath = os.pathsep.join(
        [str(WORKER_DIR), str(REPO / "tests" / "support"), os.environ.get("PYTHONPATH", "")]
    )
    monkeypatch.setenv("PYTHONPATH", pythonpath)  # sbatch exports the environment to the tasks
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(
        nodes=2, tasks_per_node=1, cpus_per_task=1, timeout_min=10, slurm_partition="debug"
    )
    job = executor.submit(run_distributed, spec("two"))
    ranks = job.results()
    assert sorted(r["node"] for r in ranks) == ["n1", "n2"]
    two = ranks[0]
    assert two["world_size"] == 2 and two["interrupted_at"] is None

    assert two["steps"].keys() == one["steps"].keys()
    for step in one["steps"]:
        for key in ("loss", "grad_norm", "tokens"):
            assert two["steps"][step][key] == pytest.approx(one["steps"][step][key], rel=1e-4), (step, key)
    a = load_model_and_tokenizer(two["outputs"]["model_dir"])[0].state_dict()
    b = load_model_and_tokenizer(one["outputs"]["model_dir"])[0].state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-4, rtol=1e-3), name
