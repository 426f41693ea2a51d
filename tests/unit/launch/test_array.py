"""Job arrays: sequential in this process on the local backends, one Slurm array otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from slingshot.config import ArrayTaskConfig, PipelineConfig, Resources, SynthConfig
from slingshot.launch.array import (
    _slurm_executor,
    array_resources,
    array_task_resources,
    run_array,
    uses_slurm,
)


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


def test_a_feature_array_task_requests_its_share_of_the_stage_node(
    site_file: Path, no_slurm: Path, tmp_path: Path
):
    # The parent is one task holding the node (an array fans out from a one-task job).
    stage = Resources(
        gpus_per_node=8, tasks_per_node=1, cpus_per_task=96, mem_gb=900, time_min=240, partition="gpu"
    )
    section = SynthConfig(resources=stage, feature_shards=16)
    share = array_resources(stage, section)  # what the job layer hands ctx.run_array
    assert (share.nodes, share.gpus_per_node, share.tasks_per_node) == (1, 1, 1)
    assert (share.cpus_per_task, share.mem_gb, share.time_min) == (12, 112.5, 240)  # 1/8 of 96 CPUs, 900 GB
    assert stage.gpus_per_node == 8 and stage.mem_gb == 900  # the parent job's request is unchanged
    cfg = PipelineConfig.model_validate({"launcher": {"backend": "slurm", "site": str(site_file)}})
    params = _slurm_executor(cfg, share, tmp_path / "array", "unit.synth.features")._executor.parameters
    assert (params["gpus_per_node"], params["cpus_per_task"], params["mem"], params["time"]) == (
        1,
        12,
        "115200MB",
        240,
    )
    two = array_task_resources(stage, ArrayTaskConfig(gpus=2, cpus_per_task=4, time_min=30))
    assert (two.gpus_per_node, two.cpus_per_task, two.mem_gb, two.time_min) == (2, 4, 225.0, 30)
    cpu_stage = Resources(tasks_per_node=4, cpus_per_task=2, mem_gb=16)
    cpu = array_task_resources(cpu_stage, ArrayTaskConfig())  # no GPUs: one stage task's share
    assert (cpu.gpus_per_node, cpu.cpus_per_task, cpu.mem_gb) == (0, 2, 4.0)
    assert array_resources(stage, None) is stage  # a stage without array_task: its own resources


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"array_task": {"gpus": 9}},
            r"array_task.gpus: 9 GPUs per array task, but the stage's nodes have 8",
        ),
        ({"array_task": {"cpus_per_task": 97}}, r"array_task.cpus_per_task: 97 CPUs .* \(96 = "),
        ({"array_task": {"mem_gb": 901}}, r"array_task.mem_gb: 901 GB .* \(900 GB, resources.mem_gb\)"),
        ({"feature_shards": 4}, r"feature_shards: 4 array tasks fan out from a one-task job, but .* 8 tasks"),
    ],
)
def test_an_impossible_array_share_is_a_config_error_naming_the_key(section, message):
    stage = {"gpus_per_node": 8, "cpus_per_task": 12, "mem_gb": 900}
    with pytest.raises(ValidationError, match=message):
        PipelineConfig.model_validate({"stages": {"synth": {"resources": stage, **section}}})
