"""The launcher on the real dev Slurm cluster: GPUs, two nodes, re-attach, cancel, USR2, node down.

All run the toy stage (tests/support/toy_stage.py) as pretraining phase 'p1' of a toy
pipeline, through Snakemake and `slingshot launch`, with real sbatch jobs."""

import subprocess
from pathlib import Path

import yaml
from mlflow import MlflowClient
from pipeline import (
    events,
    kill_session,
    launch_state,
    manifest,
    pipeline_env,
    run_snakemake,
    slurm_jobs_named,
    slurm_overrides,
    start_snakemake,
    wait_for,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]
KEY = "main/pretrain-p1"


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-j", job_id, "-h", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def test_gpu_job_gets_its_gpu_and_writes_its_manifest(tmp_path):
    config = write_config(tmp_path, slurm_overrides("gpujob", pretrain={"resources": {"gpus_per_node": 1}}))
    out = run_snakemake(tmp_path, config, "--until", "pretrain", env=pipeline_env(TOY_STEPS="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    steps = events(tmp_path, KEY)
    assert steps and all(e["cuda_visible_devices"] not in (None, "") for e in steps)
    m = manifest(tmp_path, KEY)
    assert m["slurm"]["job_ids"] == [steps[0]["job"]]
    assert (tmp_path / "results" / KEY / "model" / "model.pt").is_file()


def test_two_node_job_forms_a_gloo_group_across_n1_and_n2(tmp_path):
    config = write_config(
        tmp_path, slurm_overrides("twonode", pretrain={"resources": {"nodes": 2, "tasks_per_node": 1}})
    )
    out = run_snakemake(tmp_path, config, "--until", "pretrain", env=pipeline_env(TOY_STEPS="4"))
    assert out.returncode == 0, out.stderr[-3000:]
    rank0, rank1 = events(tmp_path, KEY, rank=0), events(tmp_path, KEY, rank=1)
    assert len(rank0) == len(rank1) == 4
    assert {rank0[0]["slurm_node"], rank1[0]["slurm_node"]} == {"n1", "n2"}
    assert manifest(tmp_path, KEY)["world_size"] == 2


def test_killed_snakemake_reattaches_to_the_running_job(tmp_path):
    config = write_config(tmp_path, slurm_overrides("reattach"))
    # Long enough that the job is still running after Snakemake restarts on a loaded machine.
    env = pipeline_env(TOY_STEPS="40", TOY_STEP_SECONDS="1")
    proc = start_snakemake(tmp_path, config, "--until", "pretrain", env=env)
    wait_for(lambda: len(events(tmp_path, KEY)) >= 2, 180, "the stage job to run")
    job_id = launch_state(tmp_path, KEY)["submissions"][0]["job_id"]
    kill_session(proc)  # Snakemake and its launchers die; the Slurm job does not
    assert squeue_state(job_id) == "RUNNING"
    subprocess.run([*_snakemake(tmp_path, config), "--unlock"], env=env, check=True, capture_output=True)
    out = run_snakemake(tmp_path, config, "--until", "pretrain", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    log = (tmp_path / "results" / "logs" / "main.pretrain-p1.log").read_text()
    assert f"re-attaching to slurm job {job_id}" in log
    assert [s["job_id"] for s in launch_state(tmp_path, KEY)["submissions"]] == [job_id]
    pipeline_name = yaml.safe_load(config.read_text())["pipeline"]["name"]
    assert slurm_jobs_named(f"{pipeline_name}.main.pretrain-p1") == [job_id]
    assert {e["job"] for e in events(tmp_path, KEY)} == {job_id}
    assert max(e["step"] for e in events(tmp_path, KEY)) == 40


def test_cancelled_job_is_resubmitted_and_resumes_from_its_checkpoint(tmp_path):
    config = write_config(tmp_path, slurm_overrides("cancel"))
    # Long enough that the cancel lands mid-run even on a loaded machine.
    env = pipeline_env(TOY_STEPS="30", TOY_STEP_SECONDS="1")
    proc = start_snakemake(tmp_path, config, "--until", "pretrain", env=env)
    wait_for(lambda: len(events(tmp_path, KEY)) >= 5, 180, "5 steps")
    first_job = launch_state(tmp_path, KEY)["submissions"][0]["job_id"]
    subprocess.run(["scancel", first_job], check=True)
    assert proc.wait(timeout=300) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    subs = launch_state(tmp_path, KEY)["submissions"]
    assert [s["reason"] for s in subs] == ["first", "resubmit"]
    second = [e for e in events(tmp_path, KEY) if e["job"] == subs[1]["job_id"]]
    reached = max(e["step"] for e in events(tmp_path, KEY) if e["job"] == first_job)
    assert reached < 30  # cancelled mid-run
    # Resumed from the newest complete checkpoint (every 2 steps; one may have been cut off
    # mid-save): the step counter continues instead of starting over.
    resumed_from = second[0]["step"] - 1
    assert resumed_from > 0 and resumed_from % 2 == 0 and reached - 3 <= resumed_from <= reached
    assert second[-1]["step"] == 30
    assert manifest(tmp_path, KEY)["slurm"]["restarts"] == 1


def test_usr2_checkpoints_and_requeues_the_same_job(tmp_path):
    config = write_config(tmp_path, slurm_overrides("usr2"))
    env = pipeline_env(TOY_STEPS="20", TOY_STEP_SECONDS="1")
    proc = start_snakemake(tmp_path, config, "--until", "pretrain", env=env)
    wait_for(lambda: len(events(tmp_path, KEY)) >= 3, 180, "3 steps")
    job_id = launch_state(tmp_path, KEY)["submissions"][0]["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    assert proc.wait(timeout=400) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    steps = events(tmp_path, KEY)
    assert {e["job"] for e in steps} == {job_id}  # requeued: the same Slurm job id
    first_run = [e for e in steps if e["restart"] == "0"]
    second_run = [e for e in steps if e["restart"] == "1"]
    assert second_run and second_run[0]["step"] == first_run[-1]["step"] + 1  # the USR2 checkpoint
    assert len(launch_state(tmp_path, KEY)["submissions"]) == 1
    m = manifest(tmp_path, KEY)
    assert m["slurm"]["requeues"] == 1 and m["slurm"]["restarts"] == 1
    # The stage's metrics continue in the same MLflow run, each step once.
    history = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db").get_metric_history(
        m["mlflow_run_id"], "loss"
    )
    assert sorted(h.step for h in history) == list(range(1, 21))


def test_node_down_the_job_completes_on_the_other_node_from_its_checkpoint(tmp_path):
    config = write_config(tmp_path, slurm_overrides("nodedown"))
    env = pipeline_env(TOY_STEPS="25", TOY_STEP_SECONDS="1")
    proc = start_snakemake(tmp_path, config, "--until", "pretrain", env=env)
    running = wait_for(lambda: len(events(tmp_path, KEY)) >= 5 and events(tmp_path, KEY), 180, "5 steps")
    node = running[-1]["slurm_node"]
    other = {"n1": "n2", "n2": "n1"}[node]
    node_sh = REPO / "cluster" / "dev" / "node.sh"
    subprocess.run(["bash", str(node_sh), "down", node, "test: node failure"], check=True, timeout=120)
    try:
        assert proc.wait(timeout=400) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    finally:
        subprocess.run(["bash", str(node_sh), "up", node], check=True, timeout=120)
    steps = events(tmp_path, KEY)
    on_other = [e for e in steps if e["slurm_node"] == other]
    assert on_other and on_other[-1]["step"] == 25
    assert on_other[0]["step"] > 1  # resumed from a checkpoint, not from scratch
    assert manifest(tmp_path, KEY)["slurm"]["restarts"] >= 1


def _snakemake(directory, config):
    from pipeline import snakemake_cmd

    return snakemake_cmd(directory, config)
