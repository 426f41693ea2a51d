"""MLflow tracking: one experiment per pipeline, a parent run per variant, a child run per stage.

Run ids are persisted in the work dir, so a requeued or rerun stage continues the
SAME run. Metrics are logged by explicit step; on resume, steps a run already has
(recomputed identically after an exact resume) are skipped, so curves never repeat.
Only rank 0 logs. Keys and values that look like secrets are never sent.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slingshot.io import atomic_write_text
from slingshot.tracking.journal import JOURNAL_FILE, Journal

# A key is secret when one of its dotted segments is, or ends in, a secret-ish word
# ("hf_token", "db.password"), but not a mere count ("total_tokens", "thought_tokens").
SECRET_KEY = re.compile(
    r"(^|[._-])(token|secret|passw(or)?d|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?|auth)($|\.)",
    re.I,
)
SECRET_VALUE = re.compile(
    r"^(hf_[A-Za-z0-9]{10,}|sk-[A-Za-z0-9_-]{10,}|gh[pousr]_[A-Za-z0-9]{10,}|xox[abpr]-)"
)
REDACTED = "***"

# MLflow limits: params values 6000 chars, 100 params per batch, 1000 metrics per batch.
# Metric names may hold only alphanumerics, _ - . space : /; "pass@1" becomes "pass_at_1".
_METRIC_NAME_BAD = re.compile(r"[^\w\-. :/]")
_PARAM_MAX = 6000
_BATCH = 100


def server_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why the tracking server at an http(s) ``uri`` cannot be reached (None: it accepts
    connections, or the URI is not a server). Checked before any stage runs: MLflow's client
    would otherwise retry for minutes inside the first job before failing."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        return f"'{uri}' is not a valid URL ({error})"
    if not parts.hostname:
        return f"'{uri}' names no host"
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        return f"no MLflow tracking server answers at {uri} ({reason})"


# What MLflow's client sends as HTTP basic auth to a server with authentication.
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


class CredentialsError(ValueError):
    pass


def journal_file(work_dir: Path) -> Path:
    """The tracking journal of the stage whose work dir this is."""
    return Path(work_dir) / JOURNAL_FILE


def is_loopback(uri: str) -> bool:
    """Whether an http(s) tracking URI names this machine only: 127.x, ::1, localhost, or a
    host name that resolves only to loopback (Debian maps a machine's own name to 127.0.1.1
    in /etc/hosts, so a login node's name can be loopback on the login node)."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(uri).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False  # unresolvable here: the server check reports that
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def read_credentials(path: str | os.PathLike[str]) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME and _PASSWORD from a ``KEY=VALUE`` file that only its owner
    may read (cluster/mlflow/serve.sh writes one)."""
    file = Path(path)
    if not file.is_file():
        raise CredentialsError(f"'{file}' does not exist (cluster/mlflow/serve.sh writes it)")
    mode = file.stat().st_mode & 0o777
    if mode & 0o077:
        raise CredentialsError(f"'{file}' may be read by others (mode {mode:o}): chmod 600 '{file}'")
    values: dict[str, str] = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise CredentialsError(f"{file}:{number}: not a KEY=VALUE line")
        values[key.strip()] = value.strip().strip("'\"")
    missing = [name for name in CREDENTIAL_VARS if not values.get(name)]
    if missing:
        raise CredentialsError(f"'{file}' does not set {' and '.join(missing)}")
    return {name: values[name] for name in CREDENTIAL_VARS}


def export_credentials(credentials_file: str | None) -> str | None:
    """Put the tracking server's credentials into this process's environment, from which
    the jobs it submits inherit them (sbatch passes the environment; nothing is written into
    a job script). Variables already set win. Returns where they came from (None: nowhere)."""
    if all(os.environ.get(name) for name in CREDENTIAL_VARS):
        return "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
    if credentials_file is None:
        return None
    os.environ.update(read_credentials(credentials_file))
    return f"tracking.credentials_file ({credentials_file})"


def auth_problem(uri: str, source: str | None, timeout_s: float = 20.0) -> str | None:
    """Why the server at ``uri`` would refuse this pipeline's requests (None: it accepts them):
    no credentials for a server with authentication, or a wrong password. One request, no
    retries: MLflow's client would otherwise fail inside the first job."""
    import requests

    user = os.environ.get(CREDENTIAL_VARS[0])
    auth = (user, os.environ.get(CREDENTIAL_VARS[1], "")) if user else None
    try:
        response = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=auth,
            timeout=timeout_s,
        )
    except requests.RequestException as error:
        return f"the tracking server at {uri} did not answer a request ({error})"
    if response.status_code == 401 and auth is None:
        return (
            f"the tracking server at {uri} requires authentication and no credentials are set: set "
            "tracking.credentials_file (cluster/mlflow/serve.sh writes DIR/credentials) or "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if response.status_code == 401:
        return f"the tracking server at {uri} refused user '{user}' from {source}: wrong password or unknown user"
    if response.status_code >= 400:
        return f"the tracking server at {uri} answered {response.status_code}: {response.text[:200]}"
    return None


def is_secret(key: str, value: Any) -> bool:
    return bool(SECRET_KEY.search(key)) or (isinstance(value, str) and bool(SECRET_VALUE.match(value)))


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists of mappings get their index in the key."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{name}.{i}."))
        else:
            flat[name] = value
    return flat


def metric_name(key: str) -> str:
    """A name MLflow accepts for ``key`` (a bad name would fail the whole batch, and the job)."""
    return _METRIC_NAME_BAD.sub("_", key.replace("@", "_at_"))


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if is_secret(k, v) else v) for k, v in params.items()}


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """Logging into one MLflow run. Construct with :meth:`open_run` or :meth:`disabled`.

    With a journal (a stage's run), every metric, param and tag batch, artifact upload and the
    run's end is appended to the journal first and sent from there (:mod:`.journal`): the stage
    keeps training while the server is unreachable."""

    def __init__(
        self,
        client: Any | None,
        run_id: str | None,
        uri: str | None = None,
        journal: Journal | None = None,
        read_history: bool = True,
    ):
        self.client = client
        self.run_id = run_id
        self.uri = uri
        self.journal = journal
        self._floor: dict[str, int] = {}
        if client is not None and run_id is not None:
            self._flush()  # what an earlier job of this stage could not send goes first
            # read_history=False: the journal alone says which steps were logged (a run with one).
            self._floor = self._logged_steps() if read_history else {}
            for key, step in (journal.metric_floor() if journal else {}).items():
                self._floor[key] = max(step, self._floor.get(key, -1))

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that logs nothing (ranks other than 0, unit tests)."""
        return cls(None, None)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    # ------------------------------------------------------------------ run setup
    @classmethod
    def open_run(
        cls,
        uri: str,
        experiment: str,
        run_id_file: Path,
        run_name: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_root: str | None = None,
        journal_path: Path | None = None,
    ) -> Tracker:
        """Open the run whose id is in ``run_id_file``, creating it (once, under a lock) if absent.

        ``artifact_root``: where a newly created experiment keeps artifacts. None: beside
        a SQLite database (``<db dir>/mlartifacts``; MLflow's own default is ./mlruns in
        whatever directory the job runs in); a tracking server decides for itself.
        ``journal_path``: log through that journal (a stage's run).
        """
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        if artifact_root is None and uri.startswith("sqlite:///"):
            artifact_root = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        with _file_lock(run_id_file.with_name(run_id_file.name + ".lock")):
            if run_id_file.is_file():
                run_id = run_id_file.read_text().strip()
                client.update_run(run_id, status="RUNNING")
            else:
                exp = client.get_experiment_by_name(experiment)
                exp_id = (
                    exp.experiment_id
                    if exp
                    else client.create_experiment(experiment, artifact_location=artifact_root)
                )
                all_tags = dict(tags or {})
                if parent_run_id:
                    all_tags["mlflow.parentRunId"] = parent_run_id
                run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
                run_id = run.info.run_id
                atomic_write_text(run_id_file, run_id + "\n")
        return cls(client, run_id, uri, Journal(journal_path) if journal_path else None)

    @classmethod
    def reopen(cls, uri: str, run_id_file: Path, journal_path: Path) -> Tracker | None:
        """The stage run of a job that has ended, to log into after it (the launcher does:
        cost, the journal's rest); None when the job never opened one."""
        if not run_id_file.is_file():
            return None
        from mlflow import MlflowClient

        run_id = run_id_file.read_text().strip()
        # The stage logged through this journal: no need to read every metric's history.
        return cls(MlflowClient(tracking_uri=uri), run_id, uri, Journal(journal_path), read_history=False)

    def _logged_steps(self) -> dict[str, int]:
        if self.journal is not None and self.journal.down_since is not None:
            return {}  # the server is down: the journal knows what was logged
        run = self.client.get_run(self.run_id)
        floor = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            if history:
                floor[key] = max(m.step for m in history)
        return floor

    # ------------------------------------------------------------------ the journal
    def _record(self, record: dict[str, Any]) -> None:
        """Journal ``record`` and send what is pending; without a journal, send it now."""
        if self.journal is None:
            self._send(record)
            return
        self.journal.append(record)
        self._flush()

    def _flush(self) -> int:
        if self.journal is None:
            return 0
        return self.journal.flush(self._send, lambda: server_problem(self.uri or "", timeout_s=2.0))

    @property
    def pending(self) -> int:
        """Journaled records the server has not acknowledged yet."""
        return self.journal.pending if self.journal else 0

    def _send(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        op = record["op"]
        if op == "batch":
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics", [])],
                params=[Param(k, v) for k, v in record.get("params", [])],
                tags=[RunTag(k, v) for k, v in record.get("tags", [])],
                synchronous=True,
            )
        elif op == "artifact":
            self.client.log_artifact(self.run_id, record["path"], record.get("artifact_path"))
        elif op == "input":
            self._send_input(record["name"], record["source"], record["digest"], record["context"])
        elif op == "model":
            self._send_model(record["name"], record["model_dir"], record["params"])
        elif op == "terminated":
            self.client.set_terminated(self.run_id, status=record["status"], end_time=record["end_time"])
        else:
            raise ValueError(f"{self.journal.path if self.journal else 'journal'}: unknown record {op!r}")

    # ------------------------------------------------------------------ logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        existing = self._existing_params()
        items = []
        for key, value in redact(flatten(params)).items():
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            text = text[:_PARAM_MAX]
            if key in existing:
                continue  # params are immutable in MLflow; a resumed run logs the same config again
            items.append([key, text])
        for i in range(0, len(items), _BATCH):
            self._record({"op": "batch", "params": items[i : i + _BATCH]})

    def _existing_params(self) -> dict[str, str]:
        if self.journal is not None and self.journal.down_since is not None:
            return {}  # MLflow keeps the first value of a param and accepts the same again
        return self.client.get_run(self.run_id).data.params

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        items = [[k, str(v)] for k, v in redact(tags).items() if v is not None]
        for i in range(0, len(items), _BATCH):
            self._record({"op": "batch", "tags": items[i : i + _BATCH]})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log at an explicit step; a step this run already holds for a key is skipped."""
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        items = []
        for raw_key, value in metrics.items():
            key = metric_name(raw_key)
            if step <= self._floor.get(key, -1) or value is None:
                continue
            items.append([key, float(value), now, step])
            self._floor[key] = step
        if items:
            self._record({"op": "batch", "metrics": items})

    def log_input(
        self, name: str, source: str | os.PathLike[str], digest: str, context: str = "training"
    ) -> None:
        """Record a dataset this stage consumed (name, content digest, where it lives)."""
        if self.enabled:
            source = str(Path(source).resolve())
            self._record(
                {"op": "input", "name": name, "source": source, "digest": digest, "context": context}
            )

    def _send_input(self, name: str, source: str, digest: str, context: str) -> None:
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        local_source = get_dataset_source_from_json(json.dumps({"uri": source}), source_type="local")
        dataset = MetaDataset(source=local_source, name=name, digest=digest[:36])
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self.client.log_inputs(self.run_id, datasets=[entry])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a file (it must stay where it is until it is sent: a manifest, a plot)."""
        if self.enabled:
            self._record(
                {"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path}
            )

    def log_model_dir(
        self, name: str, model_dir: str | os.PathLike[str], params: Mapping[str, Any] | None = None
    ) -> None:
        """Register the stage's HF model directory as an external logged model (weights stay
        where they are); its id becomes the run's tag ``slingshot.logged_model_id``."""
        if self.enabled:
            params = {k: str(v) for k, v in redact(params or {}).items()}
            self._record(
                {"op": "model", "name": name, "model_dir": str(Path(model_dir).resolve()), "params": params}
            )

    def _send_model(self, name: str, model_dir: str, params: dict[str, str]) -> None:
        import mlflow
        from mlflow.entities import RunTag

        mlflow.set_tracking_uri(self.uri)
        run = self.client.get_run(self.run_id)
        tags = run.data.tags
        if tags.get("slingshot.logged_model_id") and tags.get("slingshot.logged_model_dir") == model_dir:
            return  # sent before, its acknowledgement lost: one logged model per directory
        model = mlflow.create_external_model(
            name=name,
            source_run_id=self.run_id,
            experiment_id=run.info.experiment_id,
            tags={"slingshot.model_dir": model_dir},
            params=params,
            model_type="hf-causal-lm",
        )
        model_tags = [
            RunTag("slingshot.logged_model_id", model.model_id),
            RunTag("slingshot.logged_model_dir", model_dir),
        ]
        self.client.log_batch(self.run_id, tags=model_tags, synchronous=True)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._record({"op": "terminated", "status": status, "end_time": int(time.time() * 1000)})


def open_parent_run(
    uri: str,
    experiment: str,
    variant_work_dir: Path,
    variant: str,
    tags: Mapping[str, str],
    artifact_root: str | None = None,
) -> str:
    """The variant's parent run id, created once (several stage jobs may race to create it)."""
    tracker = Tracker.open_run(
        uri,
        experiment,
        variant_work_dir / "mlflow_parent_run_id",
        run_name=variant,
        tags=tags,
        artifact_root=artifact_root,
    )
    return tracker.run_id  # type: ignore[return-value]
