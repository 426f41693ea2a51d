"""What a real site needs before any job: the site's Python, a tracking URI compute nodes
reach, the tracking server's credentials; and the cost and progress of a stage."""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import pytest
from pipeline import write_config
from site_env import make_env, site_file

from slingshot.cli import main
from slingshot.config import Resources
from slingshot.launch.cost import clock_cost, gpus_in, parse_tres
from slingshot.launch.state import STARTS_FILE, LaunchState
from slingshot.tracking import CredentialsError, is_loopback, read_credentials
from slingshot.train.logging import Progress, StepLogger
from slingshot.validate import ConfigError, environment_problems, load_pipeline_config


def _slurm_config(tmp_path: Path, site: Path, **overrides) -> Path:
    return write_config(tmp_path, {"launcher": {"backend": "slurm", "site": str(site)}, **overrides})


def _validate(config: Path) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["validate", str(config)])
    return code, err.getvalue()


def test_a_site_python_that_does_not_exist_is_refused_by_name(tmp_path):
    site = site_file(tmp_path, python=str(tmp_path / "nowhere" / "bin" / "python"))
    code, err = _validate(_slurm_config(tmp_path, site))
    assert code == 2
    assert f"launcher.site: {site}: python: '{tmp_path}/nowhere/bin/python' does not exist" in err


def test_a_site_python_without_torch_is_refused_and_one_with_it_passes(tmp_path):
    bare = make_env(tmp_path / "bare", with_torch=False)
    site = site_file(tmp_path, name="bare", python=str(bare), setup=["export SLINGSHOT_PROBE=setup-ran"])
    code, err = _validate(_slurm_config(tmp_path, site))
    assert code == 2
    assert (
        f"launcher.site: {site}: python: '{bare}' cannot import torch: install it into that environment"
        in err
    )

    # The setup lines run first: one that fails is named too.
    failing = site_file(tmp_path, name="failing", python=str(bare), setup=["exit 3"])
    problems = environment_problems(load_pipeline_config(_slurm_config(tmp_path, failing)))
    assert problems == [
        f"launcher.site: {failing}: python: '{bare}' failed through the site's setup lines: exit 3"
    ]

    good = make_env(tmp_path / "good")
    site = site_file(tmp_path, name="good", python=str(good))
    assert environment_problems(load_pipeline_config(_slurm_config(tmp_path, site))) == []


def test_a_python_off_the_shared_paths_is_not_run_here(tmp_path):
    site = site_file(
        tmp_path, python="/cluster-only/env/bin/python", compute_nodes_local=False, shared_paths=["/shared"]
    )
    assert environment_problems(load_pipeline_config(_slurm_config(tmp_path, site))) == []


def test_a_loopback_tracking_uri_is_refused_on_a_multi_host_site_only(tmp_path):
    remote = site_file(tmp_path, name="remote", compute_nodes_local=False)
    config = _slurm_config(tmp_path, remote, tracking={"uri": "http://127.0.0.1:5000"})
    with pytest.raises(ConfigError) as error:
        load_pipeline_config(config)
    (problem,) = error.value.problems
    assert problem.startswith("tracking.uri: 'http://127.0.0.1:5000' is a loopback address, but the compute")
    assert f"[{config}:" in problem and "site 'dev'" in problem
    # The dev site's nodes are this machine: allowed there.
    local = site_file(tmp_path, name="local")
    load_pipeline_config(_slurm_config(tmp_path, local, tracking={"uri": "http://localhost:5000"}))
    assert is_loopback("http://[::1]:5000")


def test_a_host_name_is_loopback_only_when_it_resolves_to_loopback_only(monkeypatch):
    import socket

    hosts = {"login01": ["10.1.2.3"], "vmhost": ["127.0.1.1"], "dual": ["127.0.1.1", "10.1.2.4"]}

    def resolve(host, *args, **kwargs):
        if host not in hosts:
            raise socket.gaierror(f"unknown host {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in hosts[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert is_loopback("http://vmhost:5000")  # /etc/hosts maps the machine's own name to 127.0.1.1
    assert not is_loopback("http://login01:5000") and not is_loopback("http://dual:5000")
    assert not is_loopback("http://nowhere.invalid:5000")  # unresolvable: not judged loopback


def test_credentials_file_must_be_private_and_complete(tmp_path):
    path = tmp_path / "credentials"
    path.write_text("MLFLOW_TRACKING_USERNAME=slingshot\nMLFLOW_TRACKING_PASSWORD=pw\n")
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match="may be read by others .* chmod 600"):
        read_credentials(path)
    path.chmod(0o600)
    assert read_credentials(path) == {
        "MLFLOW_TRACKING_USERNAME": "slingshot",
        "MLFLOW_TRACKING_PASSWORD": "pw",
    }
    path.write_text("MLFLOW_TRACKING_USERNAME=slingshot\n")
    with pytest.raises(CredentialsError, match="does not set MLFLOW_TRACKING_PASSWORD"):
        read_credentials(path)


def test_clock_cost_counts_each_submission_from_its_start_at_the_resources_asked(tmp_path):
    state = LaunchState.load(tmp_path)
    state.add("101", "local", "first")
    state.add("102", "local", "resubmit")
    t0 = 1_000_000.0
    state.submissions[0].submitted_at, state.submissions[0].ended_at = t0, t0 + 100
    state.submissions[1].submitted_at, state.submissions[1].ended_at = t0 + 200, t0 + 260
    starts = [{"job_id": "101", "started_at": t0 + 10}, {"job_id": "102", "started_at": t0 + 210}]
    (tmp_path / STARTS_FILE).write_text("".join(json.dumps(s) + "\n" for s in starts))
    cost = clock_cost(tmp_path, state, Resources(nodes=2, gpus_per_node=4, cpus_per_task=3))
    assert cost.elapsed_s == 90 + 50 and cost.queue_wait_s == 20
    assert cost.gpu_hours == pytest.approx(140 * 8 / 3600) and cost.cpu_hours == pytest.approx(
        140 * 24 / 3600
    )
    assert (cost.jobs, cost.requeues, cost.resubmits) == (2, 0, 1)
    assert gpus_in(parse_tres("billing=2,cpu=2,gres/gpu=1,mem=1G,node=1")) == 1
    assert gpus_in(parse_tres("cpu=8,gres/gpu:a100=4,node=1")) == 4
    assert gpus_in(parse_tres("cpu=2,mem=1G,node=1")) == 0


def test_the_step_log_shows_i_of_n_percent_and_eta_and_progress_is_written(tmp_path, capsys):
    progress = Progress(tmp_path, total=40, start_step=10)
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 10
    progress.started -= 20.0  # 20 s for the first 10 steps of this job: 2 s a step
    tracker = SimpleNamespace(log_metrics=lambda metrics, step: None)
    ctx = SimpleNamespace(tracker=tracker, dist=SimpleNamespace(is_main=True), stage="sft", progress=progress)
    StepLogger(ctx, every=1).log(20, {"loss": 0.5})
    line = capsys.readouterr().out
    assert line.startswith("[sft] step 20/40 (50%) loss=0.5 (") and line.rstrip().endswith("ETA 0:00:40")
    progress.update(40)  # the last step is always written
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["step"] == saved["total"] == 40 and saved["updated_at"] <= time.time()


def test_a_site_python_without_vllm_is_refused_when_a_stage_generates_with_it(tmp_path):
    python = make_env(tmp_path / "novllm")
    purelib = next((tmp_path / "novllm" / "lib").glob("python*/site-packages"))
    (purelib / "zz-no-vllm.pth").write_text("import sys; sys.modules['vllm'] = None\n")  # torch, no vLLM
    site = site_file(tmp_path, name="novllm", python=str(python))
    vllm_stage = {"stages": {"prorl": {"enabled": True, "rollout": {"backend": "vllm"}}}}
    problems = environment_problems(load_pipeline_config(_slurm_config(tmp_path, site, **vllm_stage)))
    assert len(problems) == 1
    assert problems[0].startswith(
        f"launcher.site: {site}: python: '{python}' lacks vllm, which stages.prorl.rollout.backend need"
    )
    assert environment_problems(load_pipeline_config(_slurm_config(tmp_path, site))) == []  # HF: fine
