"""The MLflow tracking server under faults and load (a real `mlflow server` with its basic-auth
app, started with cluster/mlflow/serve.sh on a free port, a SQLite store in the test's directory):

- with authentication: an unauthenticated write is refused, the pipeline's user is accepted,
  and a wrong password is refused by name when the DAG is built, before any job.
- stopped while a real stage logs to it for longer than the MLflow client's retries (made
  short here: no retries, a 3 s timeout), then restarted: the stage trains on (what it logs
  waits in its journal), and every step's metric is in the run exactly once, equal to the
  uninterrupted run's.
- 16 concurrent jobs logging to one server through slingshot's Tracker: no lost metric,
  no error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pipeline import kill_session, pipeline_env, run_snakemake, start_snakemake, wait_for
from real_pipeline import (
    INTERVAL,
    KEY,
    STEPS,
    assert_matches_baseline,
    checkpoint_steps,
    loss_history,
    real_config,
)
from site_env import TrackingServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"
# The client's retry window, made short: one try, 3 s to connect or answer.
SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = TrackingServer(tmp_path / "mlflow-server")
    srv.start()
    for name, value in srv.credentials.items():  # this process's own MLflow client
        monkeypatch.setenv(name, value)
    try:
        yield srv
    finally:
        srv.stop()


def _with_credentials_file(config: Path, credentials: Path) -> None:
    raw = yaml.safe_load(config.read_text())
    raw["tracking"]["credentials_file"] = str(credentials)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_auth_refuses_strangers_and_wrong_passwords_and_accepts_the_pipeline(tmp_path, server):
    import requests

    url = f"{server.uri}/api/2.0/mlflow/experiments/create"
    assert requests.post(url, json={"name": "intruder"}, timeout=30).status_code == 401
    user = server.credentials["MLFLOW_TRACKING_USERNAME"]
    good = (user, server.credentials["MLFLOW_TRACKING_PASSWORD"])
    assert requests.post(url, json={"name": "pipeline"}, auth=good, timeout=30).status_code == 200
    assert (server.credentials_file.stat().st_mode & 0o777) == 0o600
    assert (server.directory / "auth" / "auth.ini").stat().st_mode & 0o777 == 0o600

    run_dir = tmp_path / "run"
    config = real_config(run_dir, "auth", tracking_uri=server.uri)
    wrong = tmp_path / "wrong-credentials"
    wrong.write_text(f"MLFLOW_TRACKING_USERNAME={user}\nMLFLOW_TRACKING_PASSWORD=not-the-password\n")
    wrong.chmod(0o600)
    _with_credentials_file(config, wrong)
    env = pipeline_env()
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    out = run_snakemake(run_dir, config, "--until", "pretrain", env=env)
    assert out.returncode != 0
    assert (
        f"tracking.credentials_file: the tracking server at {server.uri} refused user '{user}'" in out.stderr
    )
    assert "wrong password or unknown user" in out.stderr
    assert not (run_dir / "work" / "data").exists()  # before any job

    raw = yaml.safe_load(config.read_text())
    del raw["tracking"]["credentials_file"]
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = run_snakemake(run_dir, config, "--until", "pretrain", env=env)
    assert out.returncode != 0 and "requires authentication and no credentials are set" in out.stderr


def test_tracking_server_down_longer_than_the_client_retries_loses_no_metric(
    tmp_path, server, pretrain_baseline
):
    run_dir = tmp_path / "run"
    config = real_config(run_dir, "fault-mlflow", tracking_uri=server.uri)
    _with_credentials_file(config, server.credentials_file)
    proc = start_snakemake(run_dir, config, "--until", "pretrain", env=pipeline_env(**SHORT_RETRIES))
    try:
        wait_for(lambda: any(s >= INTERVAL for s in checkpoint_steps(run_dir / "work")), 300, "a checkpoint")
        server.stop()
        stopped = time.monotonic()
        # Longer than the client's window: without the journal the stage's next log call fails it.
        wait_for(lambda: max(checkpoint_steps(run_dir / "work")) >= 3 * INTERVAL, 120, "training on")
        time.sleep(max(0.0, 8 - (time.monotonic() - stopped)))
        trained_through = max(checkpoint_steps(run_dir / "work"))
        server.start()
        outage = time.monotonic() - stopped
        assert proc.wait(timeout=400) == 0, (run_dir / "snakemake.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_session(proc)
    assert checkpoint_steps(run_dir / "work")[-1] == STEPS
    log = (run_dir / "results" / "logs" / "main.pretrain-p1.log").read_text()
    assert "tracking server unreachable" in log
    history = loss_history(run_dir, KEY, uri=server.uri)
    worst = assert_matches_baseline(history, pretrain_baseline, 1e-6)
    journal = run_dir / "work" / KEY / "mlflow_journal.jsonl"
    assert int(journal.with_suffix(".sent").read_text()) == len(journal.read_text().splitlines())
    # Every metric, not only the loss: each step of each key once, as journaled.
    from mlflow import MlflowClient

    client = MlflowClient(server.uri)
    run = client.get_run(
        json.loads((run_dir / "results" / KEY / "manifest.json").read_text())["mlflow_run_id"]
    )
    journaled: dict[str, list[int]] = {}
    for line in journal.read_text().splitlines():
        for key, _value, _timestamp, step in json.loads(line).get("metrics", []):
            journaled.setdefault(key, []).append(step)
    assert set(run.data.metrics) == set(journaled) and len(journaled) > 5
    for key, steps in journaled.items():
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == sorted(steps), key
    assert run.info.status == "FINISHED"
    print(
        f"server down for {outage:.1f}s while the stage trained from step {INTERVAL} to {trained_through}; "
        f"{len(history)} loss steps, each once; worst diff {worst:.3g}"
    )


def test_sixteen_concurrent_jobs_log_every_metric(tmp_path, server):
    from mlflow import MlflowClient

    sys.path.insert(0, str(SUPPORT))
    from tracker_worker import expected

    jobs, steps = 16, 40
    go = tmp_path / "go"
    env = pipeline_env(**server.credentials)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SUPPORT / "tracker_worker.py"),
                server.uri,
                "concurrency",
                str(tmp_path / "work"),
                str(i),
                str(steps),
                str(go),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(jobs)
    ]
    try:
        # All 16 have opened their runs (their run id files exist) before any logs a step.
        wait_for(
            lambda: (
                len(list((tmp_path / "work").glob("job*/mlflow_run_id"))) == jobs
                or any(p.poll() not in (None, 0) for p in procs)
            ),
            300,
            "16 jobs to open their runs",
        )
        go.touch()
        t0 = time.monotonic()
        results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
        wall = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for _out, err, rc in results:
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err and "Error" not in err, err[-3000:]

    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("concurrency")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == jobs
    for run in children:
        i = int(run.data.tags["slingshot.job_index"])
        assert run.info.status == "FINISHED"
        for key in ("loss", "lr"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(h.step for h in history) == list(range(1, steps + 1)), (i, key)
            for h in history:
                assert h.value == pytest.approx(expected(i, h.step)[key]), (i, key, h.step)
    print(f"{jobs} jobs x {steps} steps x 2 metrics = {jobs * steps * 2} values in {wall:.1f}s, none lost")
