"""A site as a real cluster needs it, on the dev cluster: the jobs run the site file's Python
(a second environment, not the one that submits), log to a tracking server with
authentication whose credentials reach them only through the environment, and their cost
(GPU-hours of a job with a fake GPU) comes from sacct."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient
from pipeline import BIN, events, manifest, pipeline_env, run_snakemake, slurm_overrides, write_config
from site_env import TrackingServer, free_port, make_env, site_file

from slingshot.config import deep_merge
from slingshot.launch.cost import gpus_in, parse_tres
from slingshot.plan import build_plan
from slingshot.report_table import cost_rows
from slingshot.validate import load_pipeline_config

KEY = "main/pretrain-p1"


def _sacct_gpu_hours(job_id: str) -> float:
    out = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-j", job_id, "-o", "ElapsedRaw,AllocTRES"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    runs = [line.split("|") for line in out.splitlines() if line]
    return sum(int(elapsed) * gpus_in(parse_tres(tres)) for elapsed, tres in runs) / 3600


@pytest.fixture
def server(tmp_path, monkeypatch):
    """The tracking server where the test's site file says (cluster/mlflow/serve.sh reads it)."""
    site = site_file(tmp_path, name="tracking", tracking={"host": "127.0.0.1", "port": free_port()})
    srv = TrackingServer(tmp_path / "mlflow-server", site=site)
    srv.start()
    for name, value in srv.credentials.items():  # the test's own MLflow client only
        monkeypatch.setenv(name, value)
    try:
        yield srv
    finally:
        srv.stop()


def test_jobs_run_the_site_python_with_credentials_only_in_their_environment_and_cost_from_sacct(
    tmp_path, server, monkeypatch
):
    site_python = make_env(tmp_path / "site-env")
    site = site_file(tmp_path, python=str(site_python))
    overrides = deep_merge(
        slurm_overrides("site", pretrain={"resources": {"gpus_per_node": 1}}),
        {
            "launcher": {"site": str(site)},
            "tracking": {"uri": server.uri, "credentials_file": str(server.credentials_file)},
        },
    )
    config = write_config(tmp_path, overrides)
    env = pipeline_env(TOY_STEPS="4", TOY_STEP_SECONDS="1")
    for name in server.credentials:  # from tracking.credentials_file only
        env.pop(name, None)
    out = run_snakemake(tmp_path, config, "--until", "pretrain", env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    # The job ran the site's interpreter, not the one that submitted it.
    assert server.uri == (tmp_path / "mlflow-server" / "tracking_uri").read_text().strip()
    assert str(site_python) != sys.executable
    assert {e["python"] for e in events(tmp_path, KEY)} == {str(site_python)}
    m = manifest(tmp_path, KEY)
    client = MlflowClient(server.uri)
    assert client.get_run(m["mlflow_run_id"]).data.tags["slingshot.python"] == str(site_python)
    (job_id,) = m["slurm"]["job_ids"]
    script = (tmp_path / "work" / KEY / "submitit" / f"{job_id}_submission.sh").read_text()
    assert f"{site_python} -u -m submitit.core._submit" in script

    # No credential in any file the pipeline wrote (params, tags, logs, manifests, job
    # scripts), nor in any param or tag of any run.
    password = server.credentials["MLFLOW_TRACKING_PASSWORD"].encode()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and server.directory not in p.parents]
    assert any(p.name.endswith("_submission.sh") for p in written)
    assert [p for p in written if password in p.read_bytes()] == []
    experiment = client.get_experiment_by_name(yaml.safe_load(config.read_text())["pipeline"]["name"])
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 3  # the variant's parent, data, pretrain-p1
    for run in runs:
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not [v for v in values if password.decode() in v], run.info.run_name

    # Cost: the report's table (and status --cost) says GPU-hours = sacct's elapsed x GPUs.
    monkeypatch.chdir(tmp_path)  # the pipeline's relative work and results dirs
    cfg = load_pipeline_config(tmp_path / "work" / "pipeline-config.yaml")
    row = next(r for r in cost_rows(cfg, build_plan(cfg)) if r["stage"] == KEY)
    expected = _sacct_gpu_hours(job_id)
    assert expected > 0 and row["source"] == "sacct"
    assert row["gpu_hours"] == pytest.approx(expected, rel=1e-9)
    assert client.get_run(m["mlflow_run_id"]).data.metrics["cost/gpu_hours"] == pytest.approx(expected)
    status = subprocess.run(
        [str(BIN / "slingshot"), "status", "--cost"],
        cwd=tmp_path,
        env=pipeline_env(COLUMNS="220"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if KEY in line and "sacct" in line)
    assert f"{expected:.4f}" in line
