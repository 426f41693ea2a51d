"""StageJob, the callable a submitit job runs, called here as a plain function: the
entrypoint it resolves, the manifest it writes, and the requeue it asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from slingshot.io import sha256_file, sha256_json
from slingshot.launch.job import (
    DONE,
    REQUEUE,
    StageJob,
    default_entrypoint,
    resolve_entrypoint,
    slurm_restart_count,
)
from slingshot.launch.state import LaunchState
from slingshot.plan import build_plan, stage_config
from slingshot.validate import load_pipeline_config

from . import scripted

ENTRY = f"{scripted.__name__}:run"


def test_entrypoints_resolve_to_functions_or_say_what_is_missing():
    assert default_entrypoint("sft") == "slingshot.stages.sft:run"
    assert resolve_entrypoint(ENTRY) is scripted.run
    with pytest.raises(RuntimeError) as err:
        resolve_entrypoint("no_such_module_here:run")
    assert str(err.value) == (
        "stage entrypoint 'no_such_module_here:run': cannot import module 'no_such_module_here' "
        "(No module named 'no_such_module_here')"
    )
    with pytest.raises(
        RuntimeError, match=rf"^stage entrypoint '{scripted.__name__}:walk': module .* has no 'walk'$"
    ):
        resolve_entrypoint(f"{scripted.__name__}:walk")


def test_restart_count_comes_from_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert slurm_restart_count() == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "")
    assert slurm_restart_count() == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert slurm_restart_count() == 2


@pytest.fixture
def job_config(write_config, mlflow_uri, keep_usr2_handler, monkeypatch):
    # Not inside a Slurm job: a stop must come back as a requeue request, never `scontrol requeue`.
    for name in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(scripted, "SCRIPT", {})
    return write_config(
        {"tracking": {"uri": mlflow_uri}, "entrypoints": {k: ENTRY for k in ("data", "pretrain", "evaluate")}}
    )


def stage_job(config: Path, stage: str) -> StageJob:
    return StageJob(config_path=str(config), variant="main", stage=stage, cwd=str(Path.cwd()), max_requeues=3)


def test_a_finished_stage_writes_its_manifest_record(job_config: Path, mlflow_uri: str):
    assert stage_job(job_config, "data")() == {"status": DONE}
    cfg = load_pipeline_config(job_config)
    plan = build_plan(cfg)
    node = plan.node("main", "pretrain-p1")
    LaunchState.load(node.work_dir(cfg)).add("DEBUG_1", "inprocess", "first")
    assert stage_job(job_config, "pretrain-p1")() == {"status": DONE}

    manifest = json.loads(node.manifest_path(cfg).read_text())
    data_manifest = plan.node("main", "data").manifest_path(cfg)
    run_id = (node.work_dir(cfg) / "mlflow_run_id").read_text().strip()
    section = stage_config(cfg, node)
    assert section is not None
    assert {k: manifest[k] for k in ("stage", "kind", "key", "variant", "variants", "digest")} == {
        "stage": "pretrain-p1",
        "kind": "pretrain",
        "key": "main/pretrain-p1",
        "variant": "main",
        "variants": ["main"],
        "digest": node.digest,
    }
    assert manifest["config_digest"] == sha256_json(section.model_dump(mode="json"))
    assert manifest["outputs"] == {"result": str(node.output_dir(cfg) / "result.txt")}
    assert (manifest["metrics"], manifest["tokens"], manifest["note"]) == ({"score": 0.5}, 12, "x")
    assert manifest["mlflow_run_id"] == run_id
    assert manifest["slurm"] == {"job_ids": ["DEBUG_1"], "restarts": 0, "requeues": 0, "resubmits": 0}
    assert manifest["upstream"] == {
        "data": {"path": str(data_manifest), "sha256": sha256_file(data_manifest)}
    }
    assert manifest["wall_time_s"] >= 0
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["slingshot.digest"] == node.digest
    assert (
        run.data.tags["slingshot.upstream_run_ids"] == json.loads(data_manifest.read_text())["mlflow_run_id"]
    )


def test_a_stopped_stage_asks_for_a_requeue_and_writes_no_manifest(job_config: Path, mlflow_uri: str):
    scripted.SCRIPT["data"] = ["stop"]
    assert stage_job(job_config, "data")() == {
        "status": REQUEUE,
        "step": scripted.STOP_STEP,
        "signal": "SIGUSR2",
    }
    cfg = load_pipeline_config(job_config)
    node = build_plan(cfg).node("main", "data")
    assert not node.manifest_path(cfg).exists()
    run_id = (node.work_dir(cfg) / "mlflow_run_id").read_text().strip()
    assert MlflowClient(mlflow_uri).get_run(run_id).data.tags["slingshot.last_stop"] == "step 3 (SIGUSR2)"
    # The next run continues the same MLflow run and finishes the stage.
    assert stage_job(job_config, "data")() == {"status": DONE}
    assert json.loads(node.manifest_path(cfg).read_text())["mlflow_run_id"] == run_id
