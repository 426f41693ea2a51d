"""The pipeline machinery end to end on the local backend (no Slurm): real Snakemake, real
submitit processes, real checkpoints and a real MLflow store, driving the toy stage."""

import os
import signal

import pytest
from mlflow import MlflowClient
from pipeline import (
    events,
    launch_state,
    manifest,
    pipeline_env,
    run_snakemake,
    start_snakemake,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def test_two_variants_lineage_in_mlflow(tmp_path):
    config = write_config(
        tmp_path,
        {"pipeline": {"name": "lineage"}},
        variants={"a": {}, "b": {"stages": {"rlp": {"group_size": 8}}}},
    )
    out = run_snakemake(tmp_path, config)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    exp = client.get_experiment_by_name("lineage")
    runs = client.search_runs([exp.experiment_id])
    parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(parents) == ["a", "b"]
    names = sorted(r.info.run_name for r in children)
    # data, the shared pretraining phase and the report exist once; rlp and its evaluation per variant.
    assert names == ["a/evaluate-rlp", "a/pretrain-p1", "a/rlp", "b/evaluate-rlp", "b/rlp", "data", "report"]
    by_name = {r.info.run_name: r for r in children}
    assert by_name["b/rlp"].data.tags["mlflow.parentRunId"] == parents["b"].info.run_id
    assert by_name["a/pretrain-p1"].data.tags["slingshot.variants"] == "a,b"
    b_rlp = by_name["b/rlp"].data.tags
    assert b_rlp["slingshot.upstream_run_ids"].split(",") == [
        manifest(tmp_path, "data")["mlflow_run_id"],
        manifest(tmp_path, "a/pretrain-p1")["mlflow_run_id"],
    ]
    assert b_rlp["slingshot.upstream_model_dirs"].endswith("a/pretrain-p1/model")
    for run in children:
        assert run.info.status == "FINISHED"
        full = client.get_run(run.info.run_id)
        assert [d.dataset.name for d in full.inputs.dataset_inputs] == ["toy-regression"]
    assert client.get_run(by_name["b/rlp"].info.run_id).data.params["group_size"] == "8"
    logged = client.search_logged_models([exp.experiment_id])
    assert {m.source_run_id for m in logged} == {r.info.run_id for r in children}
    assert all(m.tags["slingshot.model_dir"].endswith("/model") for m in logged)
    # Each manifest records its lineage.
    m = manifest(tmp_path, "b/rlp")
    assert set(m["upstream"]) == {"data", "a/pretrain-p1"}
    assert m["mlflow_run_id"] == by_name["b/rlp"].info.run_id
    # Nothing reruns once done.
    again = run_snakemake(tmp_path, config)
    assert "Nothing to be done" in again.stdout + again.stderr


KEY = "main/pretrain-p1"


def _interrupted_run(directory, config, env):
    """USR2 the stage after 3 steps, then SIGKILL the requeued job after 2 more."""
    proc = start_snakemake(directory, config, "--until", "pretrain", env=env)
    first = wait_for(lambda: len(events(directory, KEY)) >= 3 and events(directory, KEY), 120, "3 steps")
    first_pid = first[-1]["pid"]
    os.kill(first_pid, signal.SIGUSR2)
    wait_for(lambda: len(launch_state(directory, KEY)["submissions"]) == 2, 60, "the requeue")
    second = wait_for(
        lambda: [e for e in events(directory, KEY) if e["pid"] != first_pid], 60, "the requeued job"
    )
    second_pid = second[0]["pid"]
    wait_for(
        lambda: len([e for e in events(directory, KEY) if e["pid"] == second_pid]) >= 2, 60, "2 more steps"
    )
    os.kill(second_pid, signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, (directory / "snakemake.out").read_text()[-3000:]
    reasons = [s["reason"] for s in launch_state(directory, KEY)["submissions"]]
    assert reasons == ["first", "requeue", "resubmit"]


def test_usr2_requeues_and_a_killed_job_is_resubmitted_both_resume(tmp_path):
    """Local backend: USR2 -> checkpoint -> the launcher requeues; SIGKILL -> lost -> resubmitted.
    The stage continues from its checkpoints, each step's loss equals an uninterrupted
    run's, and MLflow holds each step once."""
    env = pipeline_env(TOY_STEPS="10", TOY_STEP_SECONDS="0.6")
    runs = {}
    for name in ("clean", "faulty"):
        directory = tmp_path / name
        directory.mkdir()
        config = write_config(directory, {"pipeline": {"name": name}})
        if name == "clean":
            assert run_snakemake(directory, config, "--until", "pretrain", env=env).returncode == 0
        else:
            _interrupted_run(directory, config, env)
        runs[name] = events(directory, KEY)
    faulty = runs["faulty"]
    pids = list(dict.fromkeys(e["pid"] for e in faulty))
    assert len(pids) == 3
    starts = [min(e["step"] for e in faulty if e["pid"] == pid) for pid in pids]
    ends = [max(e["step"] for e in faulty if e["pid"] == pid) for pid in pids]
    # The requeued job starts right after its USR2 checkpoint; the resubmitted one after the
    # newest complete checkpoint (the USR2 one, or an interval one every 2 steps), so it
    # repeats at most the two steps since that checkpoint.
    assert starts[0] == 1 and starts[1] == ends[0] + 1
    resumed_from = starts[2] - 1
    assert resumed_from == ends[0] or (resumed_from % 2 == 0 and ends[0] < resumed_from <= ends[1])
    assert starts[2] >= ends[1] - 1
    assert ends[2] == 10
    clean_loss = {e["step"]: e["loss"] for e in runs["clean"]}
    for e in faulty:
        assert e["loss"] == pytest.approx(clean_loss[e["step"]], rel=1e-6), e
    m = manifest(tmp_path / "faulty", KEY)
    assert m["slurm"]["restarts"] == 2
    history = MlflowClient(f"sqlite:///{tmp_path}/faulty/results/mlflow.db").get_metric_history(
        m["mlflow_run_id"], "loss"
    )
    assert sorted(h.step for h in history) == list(range(1, 11))


def test_a_failing_stage_fails_the_rule_with_its_error_and_is_not_resubmitted(tmp_path):
    config = write_config(tmp_path, {"pipeline": {"name": "failing"}})
    out = run_snakemake(
        tmp_path, config, "--until", "pretrain", env=pipeline_env(TOY_FAIL_AT="2", TOY_FAIL_KIND="pretrain")
    )
    assert out.returncode != 0
    log = (tmp_path / "results" / "logs" / "main.pretrain-p1.log").read_text()
    assert "main/pretrain-p1 FAILED" in log and "toy stage failing on purpose at step 2" in log
    assert not (tmp_path / "results" / "main" / "pretrain-p1" / "manifest.json").exists()
    assert [s["reason"] for s in launch_state(tmp_path, KEY)["submissions"]] == ["first"]
