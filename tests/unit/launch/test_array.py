"""Job arrays: sequential in this process on the local backends, one Slurm array otherwise."""

from __future__ import annotations

from pathlib import Path

from slingshot.config import PipelineConfig, Resources
from slingshot.launch.array import _slurm_executor, run_array, uses_slurm


def test_local_backends_run_the_tasks_here_in_order(tmp_path: Path):
    calls: list[int] = []

    def square(i: int) -> int:
        calls.append(i)
        return i * i

    for backend in ("local", "inprocess"):
        cfg = PipelineConfig.model_validate({"launcher": {"backend": backend}})
        calls.clear()
        folder = tmp_path / backend
        assert not uses_slurm(cfg)
        assert run_array(square, [3, 0, 2], cfg=cfg, resources=Resources(), folder=folder, name="sq") == [
            9,
            0,
            4,
        ]
        assert calls == [3, 0, 2] and not folder.exists()


def test_no_tasks_submit_nothing_even_on_slurm(tmp_path: Path):
    cfg = PipelineConfig.model_validate({"launcher": {"backend": "slurm", "site": "nowhere"}})
    assert run_array(abs, [], cfg=cfg, resources=Resources(), folder=tmp_path / "a", name="none") == []
    assert not (tmp_path / "a").exists()


def test_an_array_task_is_one_process_with_the_site_parameters(
    site_file: Path, no_slurm: Path, tmp_path: Path
):
    cfg = PipelineConfig.model_validate({"launcher": {"backend": "slurm", "site": str(site_file)}})
    resources = Resources(nodes=2, tasks_per_node=4, gpus_per_node=1, partition="gpu", mem_gb=2.5, time_min=9)
    executor = _slurm_executor(cfg, resources, tmp_path / "array", "unit.synth.features")
    assert executor._executor.parameters == {
        "job_name": "unit.synth.features",
        "time": 9,
        "nodes": 1,  # a shard is independent work, not a distributed group
        "ntasks_per_node": 1,
        "gpus_per_node": 1,
        "cpus_per_task": 1,
        "mem": "2560MB",
        "partition": "gpu",
        "setup": [
            "export GREETING='hello world; echo injected'",
            "export QUOTE='it'\"'\"'s $HOME'",
            "export PYTHONUNBUFFERED=1",
            "module load python",
        ],
        "additional_parameters": {"exclusive": "user"},  # no --requeue: only stage jobs requeue themselves
        "account": "site-account",
        "qos": "normal",
    }
