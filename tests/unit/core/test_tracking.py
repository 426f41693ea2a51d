from mlflow import MlflowClient

from slingshot.tracking import REDACTED, Tracker, flatten, is_secret, redact


def test_secret_keys_and_values_are_redacted():
    params = flatten(
        {
            "tracking": {"api_key": "abc", "uri": "http://x"},
            "hf_token": "hf_abcdefghijklmnop",
            "model": {"path": "/m", "note": "sk-ABCDEFGHIJKLMNOP"},
            "db": {"password": "p"},
        }
    )
    clean = redact(params)
    assert clean["tracking.api_key"] == REDACTED
    assert clean["hf_token"] == REDACTED
    assert clean["model.note"] == REDACTED
    assert clean["db.password"] == REDACTED
    assert clean["tracking.uri"] == "http://x" and clean["model.path"] == "/m"
    # Counts of tokens are config, not secrets.
    assert not is_secret("stages.pretrain.total_tokens", 5)
    assert not is_secret("stages.rlp.thought_tokens", 32)
    assert is_secret("env.HF_TOKEN", "x") and is_secret("github-token", "x")


def test_run_is_created_once_and_resumed_run_skips_logged_steps(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    id_file = tmp_path / "work" / "mlflow_run_id"
    first = Tracker.open_run(uri, "exp", id_file, run_name="stage")
    first.log_params({"lr": 0.1, "api_key": "secret"})
    for step in range(1, 6):
        first.log_metrics({"loss": 1.0 / step}, step=step)
    # A requeued job opens the same run and recomputes steps 4..8 after resuming from step 3.
    second = Tracker.open_run(uri, "exp", id_file, run_name="stage")
    assert second.run_id == first.run_id
    second.log_params({"lr": 0.1})
    for step in range(4, 9):
        second.log_metrics({"loss": 1.0 / step}, step=step)
    history = MlflowClient(uri).get_metric_history(first.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    params = MlflowClient(uri).get_run(first.run_id).data.params
    assert params["api_key"] == REDACTED and params["lr"] == "0.1"


def test_child_run_points_at_parent(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = Tracker.open_run(uri, "exp", tmp_path / "p", run_name="variant")
    child = Tracker.open_run(uri, "exp", tmp_path / "c", run_name="stage", parent_run_id=parent.run_id)
    tags = MlflowClient(uri).get_run(child.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id


def test_disabled_tracker_logs_nothing():
    tracker = Tracker.disabled()
    tracker.log_metrics({"x": 1.0}, step=1)
    tracker.log_params({"a": 1})
    assert not tracker.enabled


def test_metric_names_mlflow_would_refuse_are_made_valid(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker.open_run(uri, "exp", tmp_path / "r", run_name="stage")
    tracker.log_metrics({"val/pass@1": 0.5, "eval/gcd pass@k!": 1.0}, step=1)
    metrics = MlflowClient(uri).get_run(tracker.run_id).data.metrics
    assert metrics == {"val/pass_at_1": 0.5, "eval/gcd pass_at_k_": 1.0}


def test_artifacts_of_a_sqlite_store_live_beside_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    tracker = Tracker.open_run(uri, "exp", tmp_path / "r", run_name="stage")
    artifact_uri = MlflowClient(uri).get_run(tracker.run_id).info.artifact_uri
    assert artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())


def test_server_problem_names_an_unreachable_server():
    import socket

    from slingshot.tracking import server_problem

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    problem = server_problem(f"http://127.0.0.1:{port}", timeout_s=2)
    assert problem == f"no MLflow tracking server answers at http://127.0.0.1:{port} (Connection refused)"
    assert server_problem("sqlite:////tmp/x.db") is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert server_problem(f"http://127.0.0.1:{s.getsockname()[1]}") is None
