"""The MLflow tracking server under faults and load (a real `mlflow server` started with
cluster/mlflow/serve.sh on a free port, a SQLite store in the test's directory):

- restarted while a real stage logs to it: the stage and the pipeline finish, and every
  step's metric is in the run exactly once, equal to the uninterrupted run's. What carries
  the stage through is the MLflow client's own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7
  with backoff 2 s, 4 s, 8 s, ... : about 4 minutes) around slingshot's synchronous
  log_batch calls, and a launch that starts during the outage waits up to 60 s for it.
- 16 concurrent jobs logging to one server through slingshot's Tracker: no lost metric,
  no error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline import kill_session, pipeline_env, start_snakemake, wait_for
from real_pipeline import (
    INTERVAL,
    KEY,
    STEPS,
    assert_matches_baseline,
    checkpoint_steps,
    loss_history,
    real_config,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """cluster/mlflow/serve.sh and stop.sh on one store directory and one port."""

    def __init__(self, directory: Path, port: int):
        self.directory = directory
        self.env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_START_TIMEOUT": "180"}
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        out = subprocess.run(
            ["bash", str(REPO / "cluster/mlflow/serve.sh"), str(self.directory)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stderr[-3000:]

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(REPO / "cluster/mlflow/stop.sh"), str(self.directory)],
            env=self.env,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "mlflow-server", _free_port())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_tracking_server_restarted_mid_stage_loses_no_metric(tmp_path, server, pretrain_baseline):
    run_dir = tmp_path / "run"
    config = real_config(run_dir, "fault-mlflow", tracking_uri=server.uri)
    proc = start_snakemake(run_dir, config, "--until", "pretrain")
    try:
        wait_for(lambda: any(s >= INTERVAL for s in checkpoint_steps(run_dir / "work")), 300, "a checkpoint")
        server.stop()
        stopped = time.monotonic()
        time.sleep(3)  # the outage: the stage's next log_batch fails to connect and retries
        server.start()
        outage = time.monotonic() - stopped
        assert proc.wait(timeout=400) == 0, (run_dir / "snakemake.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_session(proc)
    assert checkpoint_steps(run_dir / "work")[-1] == STEPS
    history = loss_history(run_dir, KEY, uri=server.uri)
    worst = assert_matches_baseline(history, pretrain_baseline, 1e-6)
    print(f"server down for {outage:.1f}s; {len(history)} loss steps, each once; worst diff {worst:.3g}")


def test_sixteen_concurrent_jobs_log_every_metric(tmp_path, server):
    from mlflow import MlflowClient

    sys.path.insert(0, str(SUPPORT))
    from tracker_worker import expected

    jobs, steps = 16, 40
    go = tmp_path / "go"
    env = pipeline_env()
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
