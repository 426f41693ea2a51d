"""The launcher: the executor a stage gets, how a finished job is classified, the stale
work dir, and whole launches on the in-process backend (submitit's debug executor)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from slingshot.launch.launcher import (
    LogStreamer,
    Outcome,
    RunningJob,
    _check_work_dir,
    _wait,
    launch,
    make_executor,
)
from slingshot.launch.state import LaunchState
from slingshot.plan import Node, build_plan
from slingshot.validate import load_pipeline_config

from . import scripted


def node_of(config: Path, stage: str = "pretrain-p1") -> tuple[Any, Node]:
    cfg = load_pipeline_config(config)
    return cfg, build_plan(cfg).node("main", stage)


# --------------------------------------------------------------------------- executors
def test_a_local_job_gets_the_stage_resources(write_config, tmp_path: Path):
    resources = {"cpus_per_task": 2, "mem_gb": 3, "time_min": 7, "setup": ["export X='a b'"]}
    cfg, node = node_of(
        write_config({"launcher": {"backend": "local"}, "stages": {"pretrain": {"resources": resources}}})
    )
    executor = make_executor(cfg, node, tmp_path / "submitit")
    assert executor._executor.parameters == {
        "name": "unit.main.pretrain-p1",
        "timeout_min": 7,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 0,
        "cpus_per_task": 2,
        "mem_gb": 3.0,
        "setup": ["export X='a b'"],
    }
    assert (tmp_path / "submitit").stat().st_mode & 0o777 == 0o700


def test_nodes_without_a_stage_section_get_the_default_resources(write_config, tmp_path: Path):
    config = write_config(
        {"launcher": {"backend": "local", "default_resources": {"time_min": 5, "cpus_per_task": 3}}}
    )
    cfg, node = node_of(config, "data")
    parameters = make_executor(cfg, node, tmp_path / "submitit")._executor.parameters
    assert (parameters["name"], parameters["timeout_min"], parameters["cpus_per_task"]) == ("unit.data", 5, 3)


def test_the_slurm_batch_script_has_the_resources_and_quotes_what_reaches_its_shell(
    write_config, site_file: Path, no_slurm: Path, tmp_path: Path
):
    resources = {"partition": "gpu", "gpus_per_node": 2, "time_min": 30, "setup": ["source 'my env.sh'"]}
    config = write_config(
        {
            "launcher": {"backend": "slurm", "site": str(site_file), "signal_delay_s": 90},
            "stages": {"pretrain": {"resources": resources}},
        }
    )
    cfg, node = node_of(config)
    executor = make_executor(cfg, node, tmp_path / "submitit")
    lines = executor._executor._make_submission_file_text("python -m job", "uid").splitlines()
    for flag in (
        "--job-name=unit.main.pretrain-p1",
        "--partition=gpu",
        "--nodes=1",
        "--ntasks-per-node=2",  # one task per GPU
        "--gpus-per-node=2",
        "--cpus-per-task=1",
        "--time=30",
        "--signal=USR2@90",
        "--requeue",
        "--account=site-account",
        "--qos=normal",
        "--exclusive=user",
    ):
        assert f"#SBATCH {flag}" in lines
    assert lines[lines.index("# setup") + 1 : lines.index("# command") - 1] == [
        "export GREETING='hello world; echo injected'",
        "export QUOTE='it'\"'\"'s $HOME'",
        "export PYTHONUNBUFFERED=1",
        "module load python",
        "source 'my env.sh'",
    ]


def test_a_site_or_stage_flag_overrides_requeue(
    write_config, site_file: Path, no_slurm: Path, tmp_path: Path
):
    config = write_config(
        {
            "launcher": {"backend": "slurm", "site": str(site_file)},
            "stages": {"pretrain": {"resources": {"extra_sbatch": {"requeue": "no"}}}},
        }
    )
    cfg, node = node_of(config)
    parameters = make_executor(cfg, node, tmp_path / "submitit")._executor.parameters
    assert parameters["additional_parameters"] == {"requeue": "no", "exclusive": "user"}


# --------------------------------------------------------------------------- outcomes
@pytest.mark.parametrize(
    ("call", "status", "detail"),
    [
        (partial(dict, status="done"), "done", "{'status': 'done'}"),
        (partial(dict, status="requeue", step=4), "requeue", "{'status': 'requeue', 'step': 4}"),
        (partial(int, "seven"), "failed", "ValueError: invalid literal for int() with base 10: 'seven'"),
        (partial(os._exit, 3), "lost", "ended (ENDED) without a result"),  # killed: no result file
    ],
    ids=["done", "requeue", "failed", "lost"],
)
def test_a_finished_local_job_is_classified_by_its_result(write_config, tmp_path, call, status, detail):
    cfg, node = node_of(write_config({"launcher": {"backend": "local"}}))
    folder = tmp_path / "submitit"
    job = make_executor(cfg, node, folder).submit(call)
    outcome = _wait(RunningJob("local", str(job.job_id), folder, job), poll_s=0.05)
    assert outcome.status == status and detail in outcome.detail
    # A launcher that re-attached (no job object, only the id in launch.json) reads the same files.
    assert _wait(RunningJob("local", str(job.job_id), folder), poll_s=0.05) == outcome


def test_an_in_process_job_runs_inside_wait(write_config, tmp_path: Path):
    cfg, node = node_of(write_config())
    job = make_executor(cfg, node, tmp_path / "submitit").submit(partial(dict, status="requeue", step=2))
    assert _wait(RunningJob("inprocess", str(job.job_id), tmp_path / "submitit", job), 0.05) == Outcome(
        "requeue"
    )


def test_a_local_job_is_alive_until_its_process_ends_or_leaves_a_result(tmp_path: Path):
    process = subprocess.Popen(["sleep", "60"])
    job = RunningJob("local", str(process.pid), tmp_path)
    try:
        assert job.alive() and job.state() == "RUNNING"
        job.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
        job.paths.result_pickle.write_bytes(b"")
        assert not job.alive()  # a result file means the job is over
        job.paths.result_pickle.unlink()
        job.cancel()
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
        assert not job.alive()  # a zombie is not a running job
    finally:
        process.kill()
        process.wait()
    assert not job.alive() and job.state() == "ENDED"
    assert not RunningJob("local", "not-a-pid", tmp_path).alive()


def test_the_log_streamer_copies_what_the_job_appends(tmp_path: Path, capsysbinary):
    out, err = tmp_path / "job.out", tmp_path / "job.err"
    streamer = LogStreamer([out, err])
    streamer.pump()  # neither file exists yet
    out.write_bytes(b"one\n")
    streamer.pump()
    with open(out, "ab") as handle:
        handle.write(b"two\n")
    err.write_bytes(b"E\n")
    streamer.pump()
    streamer.pump()  # nothing new
    out.write_bytes(b"3\n")  # a restarted job starts its log again
    streamer.pump()
    assert capsysbinary.readouterr().out == b"one\ntwo\nE\n3\n"


# --------------------------------------------------------------------------- work dirs
def test_a_work_dir_of_another_digest_is_moved_aside(write_config):
    cfg, node = node_of(write_config())
    work_dir = node.work_dir(cfg)
    (work_dir / "checkpoints").mkdir(parents=True)
    (work_dir / "checkpoints" / "step-5").write_text("old")
    (work_dir / "digest").write_text("another-config\n")
    _check_work_dir(cfg, node)
    stale = [p for p in work_dir.parent.iterdir() if p != work_dir]
    assert len(stale) == 1 and re.fullmatch(r"pretrain-p1\.stale-\d{8}-\d{6}", stale[0].name)
    assert (stale[0] / "checkpoints" / "step-5").read_text() == "old"
    assert (stale[0] / "digest").read_text() == "another-config\n"
    assert [p.name for p in work_dir.iterdir()] == ["digest"]
    assert (work_dir / "digest").read_text() == node.digest + "\n"
    assert work_dir.stat().st_mode & 0o777 == 0o700


def test_a_work_dir_of_this_digest_is_resumed(write_config):
    cfg, node = node_of(write_config())
    work_dir = node.work_dir(cfg)
    (work_dir / "checkpoints").mkdir(parents=True)
    (work_dir / "digest").write_text(node.digest + "\n")
    _check_work_dir(cfg, node)
    assert sorted(p.name for p in work_dir.iterdir()) == ["checkpoints", "digest"]
    assert [p.name for p in work_dir.parent.iterdir()] == ["pretrain-p1"]


def test_a_new_work_dir_gets_the_digest(write_config):
    cfg, node = node_of(write_config())
    _check_work_dir(cfg, node)
    assert (node.work_dir(cfg) / "digest").read_text() == node.digest + "\n"


# --------------------------------------------------------------------------- launches
@pytest.fixture
def launch_config(write_config, mlflow_uri, keep_usr2_handler, monkeypatch):
    """The in-process backend running the scripted stage for every node."""
    for name in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(scripted, "SCRIPT", {})
    entry = f"{scripted.__name__}:run"

    def config(**launcher: Any) -> Path:
        return write_config(
            {
                "tracking": {"uri": mlflow_uri},
                "launcher": launcher,
                "entrypoints": {k: entry for k in ("data", "pretrain", "evaluate", "report")},
            }
        )

    return config


def reasons(cfg: Any, node: Node) -> list[str]:
    return [s.reason for s in LaunchState.load(node.work_dir(cfg)).submissions]


def test_a_launch_runs_the_stage_once(launch_config, capsys):
    config = launch_config()
    cfg, node = node_of(config)
    assert launch(config, "main", "data") == 0
    assert launch(config, "main", "pretrain-p1") == 0
    state = LaunchState.load(node.work_dir(cfg))
    assert [(s.backend, s.reason) for s in state.submissions] == [("inprocess", "first")]
    assert json.loads(node.manifest_path(cfg).read_text())["slurm"]["job_ids"] == state.job_ids
    capsys.readouterr()
    assert launch(config, "main", "pretrain-p1") == 0
    assert f"main/pretrain-p1 is already done ({node.manifest_path(cfg)})" in capsys.readouterr().out
    assert reasons(cfg, node) == ["first"]


def test_a_stage_that_stops_after_a_checkpoint_is_run_again(launch_config):
    config = launch_config(max_requeues=2)
    cfg, node = node_of(config)
    assert launch(config, "main", "data") == 0
    scripted.SCRIPT["pretrain-p1"] = ["stop", "stop"]
    assert launch(config, "main", "pretrain-p1") == 0
    assert reasons(cfg, node) == ["first", "requeue", "requeue"]
    slurm = json.loads(node.manifest_path(cfg).read_text())["slurm"]
    assert (slurm["restarts"], slurm["requeues"], slurm["resubmits"]) == (2, 0, 2)


def test_a_stage_that_keeps_stopping_gives_up_after_max_requeues(launch_config, capsys):
    config = launch_config(max_requeues=1)
    cfg, node = node_of(config)
    assert launch(config, "main", "data") == 0
    scripted.SCRIPT["pretrain-p1"] = ["stop"] * 5
    assert launch(config, "main", "pretrain-p1") == 1
    assert reasons(cfg, node) == ["first", "requeue"]
    assert not node.manifest_path(cfg).exists()
    assert (
        "main/pretrain-p1 stopped 2 times (launcher.max_requeues=1); its checkpoint is kept: rerun to continue"
        in capsys.readouterr().out
    )
    # A rerun continues: a fresh submission of the same work dir.
    scripted.SCRIPT["pretrain-p1"] = []
    assert launch(config, "main", "pretrain-p1") == 0
    assert reasons(cfg, node) == ["first", "requeue", "resubmit"]
