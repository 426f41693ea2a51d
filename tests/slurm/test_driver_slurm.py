"""`slingshot submit` on the real dev Slurm cluster: the Snakemake driver as a requeueing job.

Toy stages (tests/support/toy_stage.py) for the driver's own faults (requeued at its time
limit, its node taken down, scancel, a second driver); the real pretraining stage for
`slingshot cancel` then `slingshot submit` resuming from the stage's checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from pipeline import (
    BIN,
    REPO,
    events,
    launch_state,
    pipeline_env,
    run_snakemake,
    slurm_jobs_named,
    slurm_overrides,
    wait_for,
    write_config,
)
from real_pipeline import real_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _no_stray_driver(tmp_path):
    yield
    lock = tmp_path / "work" / "driver" / "driver.json"
    if lock.is_file():  # before the stage jobs (conftest): a live driver would resubmit them
        subprocess.run(["scancel", json.loads(lock.read_text())["job_id"]], check=False)


def driver_site(directory: Path, **driver: Any) -> Path:
    """The dev site with its driver section changed (e.g. a short time limit)."""
    raw = yaml.safe_load((REPO / "cluster" / "dev.yaml").read_text())
    raw["driver"] = {**raw["driver"], **driver}
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def slingshot(directory: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "python"), "-m", "slingshot.cli", *args],
        cwd=directory,
        env=env or pipeline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def submit(directory: Path, config: Path, *args: str, env: dict[str, str] | None = None):
    snakemake_args = [
        "-s",
        str(REPO / "Snakefile"),
        "--configfile",
        str(config),
        "--directory",
        str(directory),
    ]
    return slingshot(
        directory, "submit", *snakemake_args, "--cores", "4", "--latency-wait", "5", *args, env=env
    )


def driver_lock(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "work" / "driver" / "driver.json").read_text())


def sacct(job_id: str, fields: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", fields], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1].split("|") if out.stdout.strip() else []


def job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-j", job_id, "-h", "-o", "%T"], capture_output=True, text=True)
    if out.stdout.strip():
        return out.stdout.split()[0]
    fields = sacct(job_id, "State")
    return fields[0].split()[0] if fields else "UNKNOWN"


def ended(job_id: str) -> str:
    state = job_state(job_id)
    return state if state not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "UNKNOWN") else ""


def name_of(config: Path) -> str:
    return yaml.safe_load(config.read_text())["pipeline"]["name"]


def test_driver_requeued_twice_completes_the_pipeline_once_and_refuses_a_second_driver(tmp_path):
    # A 1-minute driver gets USR2 15-45 s in (slurmctld checks time limits every 30 s) and
    # requeues itself; the two stages take at least 2 x 45 s of steps plus their start-up, so
    # even an idle machine needs three driver windows (with 20 steps a fresh-clone CI run
    # finished after one requeue).
    site = driver_site(tmp_path, time_min=1, signal_delay_s=15, stop_grace_s=10, max_requeues=8)
    overrides = slurm_overrides("drvq", pretrain={"resources": {"time_min": 7}})
    overrides["launcher"]["site"] = str(site)
    config = write_config(tmp_path, overrides)
    steps = 45
    env = pipeline_env(TOY_STEPS=str(steps), TOY_STEP_SECONDS="1")
    out = submit(tmp_path, config, "--until", "pretrain", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = driver_lock(tmp_path)["job_id"]
    assert f"submitted driver job {job_id}; log: " in out.stdout

    wait_for(lambda: job_state(job_id) == "RUNNING", 120, "the driver to run")
    again = submit(tmp_path, config, "--until", "pretrain", env=env)
    assert again.returncode == 2 and f"driver job {job_id} is" in again.stderr, again.stderr
    plain = run_snakemake(tmp_path, config, "--until", "pretrain", env=env)
    assert plain.returncode != 0 and f"driven by Slurm job {job_id}" in plain.stderr + plain.stdout
    assert slurm_jobs_named(f"{name_of(config)}.driver") == [job_id]  # nothing else submitted

    assert wait_for(lambda: ended(job_id), 480, "the driver to finish", every=2) == "COMPLETED"
    lock = driver_lock(tmp_path)
    log = Path(lock["log"]).read_text()
    requeues = [line for line in log.splitlines() if "requeueing driver job" in line]
    print("\n".join(line for line in log.splitlines() if "[slingshot driver" in line))
    assert len(requeues) >= 2 and lock["starts"][-1]["restart"] == len(requeues)
    for key in ("data", "main/pretrain-p1"):
        subs = launch_state(tmp_path, key)["submissions"]
        print(f"{key}: stage job ids {[s['job_id'] for s in subs]}")
        assert [s["reason"] for s in subs] == ["first"]  # submitted once, re-attached after each requeue
        run_id = json.loads((tmp_path / "results" / key / "manifest.json").read_text())["mlflow_run_id"]
        history = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db").get_metric_history(run_id, "loss")
        assert sorted(h.step for h in history) == list(range(1, steps + 1))  # every step once
    status = slingshot(tmp_path, "status", env=env)
    assert f"driver: slurm:{job_id}  COMPLETED  requeues {len(requeues)}" in status.stdout, status.stdout

    # The stage jobs were submitted from inside the driver but have their own resources (with
    # the driver's SLURM_MEM_PER_NODE inherited, the stage's srun fails: "mutually exclusive").
    stage_job = launch_state(tmp_path, "main/pretrain-p1")["submissions"][0]["job_id"]
    assert sacct(job_id, "ReqCPUS,ReqMem,Timelimit") == ["1", "1G", "00:01:00"]
    assert sacct(stage_job, "ReqCPUS,ReqMem,Timelimit,State") == ["1", "2G", "00:07:00", "COMPLETED"]


def test_driver_node_down_then_scancel_and_submit_again_reattaches(tmp_path):
    config = write_config(tmp_path, slurm_overrides("drvnode"))
    env = pipeline_env(TOY_STEPS="60", TOY_STEP_SECONDS="1")
    assert submit(tmp_path, config, "--until", "data", env=env).returncode == 0
    job_id = driver_lock(tmp_path)["job_id"]
    wait_for(lambda: len(events(tmp_path, "data")) >= 2, 180, "the data stage to run")
    node = driver_lock(tmp_path)["starts"][-1]["node"]
    other = {"n1": "n2", "n2": "n1"}[node]
    node_sh = REPO / "cluster" / "dev" / "node.sh"
    subprocess.run(["bash", str(node_sh), "down", node, "test: driver node down"], check=True, timeout=120)
    try:
        restarted = wait_for(
            lambda: [s for s in driver_lock(tmp_path)["starts"] if s["restart"] >= 1],
            180,
            "the requeued driver",
        )
        assert restarted[-1]["node"] == other
        # The stage job (killed too if it shared the node) runs under the requeued driver.
        wait_for(lambda: _followed_again(tmp_path), 180, "the requeued driver's launcher")
    finally:
        subprocess.run(["bash", str(node_sh), "up", node], check=True, timeout=120)
    stage_job = launch_state(tmp_path, "data")["submissions"][-1]["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    wait_for(lambda: ended(job_id), 120, "the cancelled driver to end")
    assert job_state(stage_job) == "RUNNING"  # the driver's end never cancels a stage job

    out = submit(tmp_path, config, "--until", "data", env=env)
    assert out.returncode == 0 and "taking over its lock" in out.stdout, out.stdout + out.stderr
    second = driver_lock(tmp_path)["job_id"]
    assert wait_for(lambda: ended(second), 300, "the second driver", every=2) == "COMPLETED"
    log = (tmp_path / "results" / "logs" / "data.log").read_text()
    assert f"re-attaching to slurm job {stage_job}" in log
    assert launch_state(tmp_path, "data")["submissions"][-1]["job_id"] == stage_job
    assert max(e["step"] for e in events(tmp_path, "data")) == 60


def _followed_again(directory: Path) -> bool:
    """The data stage's job runs and a launcher of the requeued driver follows it."""
    log_path = directory / "results" / "logs" / "data.log"
    log = log_path.read_text() if log_path.is_file() else ""
    running = job_state(launch_state(directory, "data")["submissions"][-1]["job_id"]) == "RUNNING"
    return running and ("re-attaching" in log or "resubmitting" in log)


def test_bad_driver_site_is_refused_before_anything_is_submitted(tmp_path):
    for driver, expected in (
        ({"partition": None}, "driver.partition is not set"),
        ({"partition": "nope"}, "driver.partition 'nope' is not a partition of this cluster (sinfo: debug)"),
    ):
        site = driver_site(tmp_path, **driver)
        overrides = slurm_overrides("drvbad")
        overrides["launcher"]["site"] = str(site)
        config = write_config(tmp_path, overrides)
        out = submit(tmp_path, config)
        assert out.returncode == 2, out.stdout
        assert f"slingshot submit: {site}: {expected}" in out.stderr, out.stderr
        assert not (tmp_path / "work" / "driver").exists()
        assert slurm_jobs_named(f"{name_of(config)}.driver") == []


def test_slingshot_cancel_then_submit_resumes_the_real_stage_from_its_checkpoint(tmp_path, pretrain_baseline):
    from real_pipeline import INTERVAL, KEY, assert_matches_baseline, checkpoint_steps, loss_history

    config = real_config(tmp_path, "drvcancel", backend="slurm")
    assert submit(tmp_path, config, "--until", "pretrain").returncode == 0
    driver = driver_lock(tmp_path)["job_id"]
    wait_for(lambda: checkpoint_steps(tmp_path / "work")[-1:] >= [2 * INTERVAL], 300, "2 checkpoints")
    stage_job = launch_state(tmp_path, KEY)["submissions"][0]["job_id"]
    out = slingshot(tmp_path, "cancel")
    assert out.returncode == 0 and f"cancelled 2 job(s): {driver} {stage_job}" in out.stdout, out.stdout
    assert wait_for(lambda: ended(stage_job), 60, "the cancelled stage job") == "CANCELLED"
    assert ended(driver) == "CANCELLED"
    kept = checkpoint_steps(tmp_path / "work")
    assert kept and kept[-1] >= 2 * INTERVAL  # the checkpoints are left for the next driver

    assert submit(tmp_path, config, "--until", "pretrain").returncode == 0
    second = driver_lock(tmp_path)["job_id"]
    assert wait_for(lambda: ended(second), 400, "the second driver", every=2) == "COMPLETED"
    assert [s["reason"] for s in launch_state(tmp_path, KEY)["submissions"]] == ["first", "resubmit"]
    log = (tmp_path / "results" / "logs" / "main.pretrain-p1.log").read_text()
    resumed = [
        int(step)
        for step in re.findall(rf"pretrain-p1: resumed from work/{KEY}/checkpoints/step-(\d{{8}})", log)
    ]
    assert len(resumed) == 1 and kept[-1] - INTERVAL <= resumed[0] <= kept[-1], (resumed, kept)
    assert len(launch_state(tmp_path, "data")["submissions"]) == 1  # the data stage was not rerun
    worst = assert_matches_baseline(loss_history(tmp_path), pretrain_baseline, 1e-6)
    print(f"largest |loss - uninterrupted loss| over all steps: {worst:.3g}")
