"""A look at the pipeline in the MLflow UI: serve the store, open it in headless Chromium.

``screenshot_runs_page(tracking_uri, experiment, png, work_dir)`` serves a SQLite store with
``mlflow server`` on a free loopback port (or uses an ``http(s)://`` tracking server as it
is) and renders pages of the React UI in headless Chromium (``--dump-dom`` after the app
has fetched and rendered, within a virtual time budget; ``--screenshot``):

- the experiment's runs page ``#/experiments/<id>/runs`` (screenshot ``png``): which
  parent (variant) runs it lists;
- each stage run's page ``#/experiments/<id>/runs/<run_id>``: that it shows the run's
  name, "Parent run" = its variant's parent run, and each dataset input by name.

What each page should show comes from the REST API of the SAME server (runs/search:
parents, their stage runs via ``mlflow.parentRunId``, dataset inputs). The report stage
calls it when ``ui_wanted()`` (by default: whenever Chromium is installed); by hand:
``python -m slingshot.report_ui TRACKING_URI EXPERIMENT OUT.png`` (exit 1 if a page differs).

Needs the ``chromium`` executable (Debian package ``chromium``; override with
``SLINGSHOT_CHROMIUM``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root in containers and CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


UI_ENV = "SLINGSHOT_REPORT_MLFLOW_UI"


class UIError(RuntimeError):
    pass


def ui_wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the report shows the MLflow UI: ``SLINGSHOT_REPORT_MLFLOW_UI=1`` always (an
    error without Chromium), ``0`` never, unset: when a Chromium executable is found."""
    value = env.get(UI_ENV, "")
    if value == "":
        try:
            chromium_path()
        except UIError:
            return False
        return True
    return value != "0"


def chromium_path() -> str:
    path = (
        os.environ.get("SLINGSHOT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not path:
        raise UIError("no chromium executable (install the 'chromium' package or set SLINGSHOT_CHROMIUM)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback/tracking URL
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def _post(url: str, payload: dict[str, Any], timeout: float = 60) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read())


@contextlib.contextmanager
def mlflow_server(tracking_uri: str, log_path: Path, start_timeout: float = 120) -> Iterator[str]:
    """The base URL of a server for ``tracking_uri``: the URI itself if it is a server,
    else ``mlflow server`` on a free loopback port for the lifetime of the context."""
    if tracking_uri.startswith(("http://", "https://")):
        yield tracking_uri.rstrip("/")
        return
    port = free_port()
    # The same settings as cluster/mlflow/serve.sh: one worker, no job runner (a second
    # process pool the UI does not need), bound to loopback only.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    artifacts = Path(tempfile.mkdtemp(prefix="mlflow-ui-artifacts-"))
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--default-artifact-root",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise UIError(f"mlflow server exited with {proc.returncode} (log: {log_path})")
            with contextlib.suppress(OSError):
                if _get(f"{base}/health", timeout=2) == "OK":
                    break
            if time.monotonic() > deadline:
                raise UIError(
                    f"mlflow server did not answer /health in {start_timeout:.0f}s (log: {log_path})"
                )
            time.sleep(0.3)
        yield base
    finally:
        # Only the server this context started (its own session: gunicorn/uvicorn workers too).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        shutil.rmtree(artifacts, ignore_errors=True)


def chromium(url: str, args: list[str], profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [
        chromium_path(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",  # let the React app fetch and render before dumping
        "--window-size=1600,1000",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def lineage_via_rest(base: str, experiment: str) -> dict[str, Any]:
    """Parent runs, their stage runs and the stage runs' dataset inputs, from the REST API."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    exp = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    runs: list[dict[str, Any]] = []
    token = None
    while True:
        payload: dict[str, Any] = {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}
        if token:
            payload["page_token"] = token
        page = _post(f"{base}/api/2.0/mlflow/runs/search", payload)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            break
    parents: dict[str, dict[str, Any]] = {}
    children: list[dict[str, Any]] = []
    for run in runs:
        tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
        item = {
            "run_id": run["info"]["run_id"],
            "name": run["info"].get("run_name", ""),
            "status": run["info"].get("status"),
            "parent": tags.get("mlflow.parentRunId"),
            "datasets": [d["dataset"]["name"] for d in run.get("inputs", {}).get("dataset_inputs", [])],
        }
        if item["parent"]:
            children.append(item)
        else:
            parents[item["run_id"]] = {**item, "stages": []}
    for child in children:
        if child["parent"] in parents:
            parents[child["parent"]]["stages"].append(child)
    return {"experiment_id": exp["experiment_id"], "parents": list(parents.values())}


def dom_texts(dom: str) -> list[str]:
    """The text nodes of a rendered page, in document order (enough to read MLflow's pages)."""
    import html

    return [html.unescape(t).strip() for t in re.findall(r">([^<>]+)<", dom) if t.strip()]


def check_run_page(texts: list[str], run: dict[str, Any], parent_name: str) -> dict[str, Any]:
    """What a stage run's page shows: its name, its parent run, its dataset inputs."""
    parent_shown = any(
        t == "Parent run" and texts[i + 1 : i + 2] == [parent_name] for i, t in enumerate(texts)
    )
    datasets = {name: any(t.startswith(f"{name} (") or t == name for t in texts) for name in run["datasets"]}
    return {
        "name": run["name"],
        "name_shown": run["name"] in texts,
        "parent_shown": parent_shown,
        "datasets_shown": datasets,
        "ok": run["name"] in texts and parent_shown and all(datasets.values()),
    }


def _render(url: str, profile: Path, screenshot: Path | None = None) -> str:
    dom = chromium(url, ["--dump-dom"], profile)
    if dom.returncode != 0:
        raise UIError(f"chromium --dump-dom {url} failed ({dom.returncode}): {dom.stderr[-2000:]}")
    if screenshot is not None:
        tmp = screenshot.with_name(f".{screenshot.name}.tmp.png")
        shot = chromium(url, [f"--screenshot={tmp}"], profile)
        if shot.returncode != 0 or not tmp.is_file():
            raise UIError(f"chromium --screenshot {url} failed ({shot.returncode}): {shot.stderr[-2000:]}")
        os.replace(tmp, screenshot)
    return dom.stdout


def screenshot_runs_page(
    tracking_uri: str,
    experiment: str,
    png: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    max_run_pages: int | None = None,
) -> dict[str, Any]:
    """Serve the store, render the experiment's runs page (screenshot ``png``, DOM beside it) and
    each stage run's page (up to ``max_run_pages``; one with datasets also as ``<png>-run.png``),
    and check what they show against the REST API's view of the same runs."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    checks: list[dict[str, Any]] = []
    try:
        with mlflow_server(tracking_uri, work / "mlflow-ui-server.log") as base:
            lineage = lineage_via_rest(base, experiment)
            url = f"{base}/#/experiments/{lineage['experiment_id']}/runs"
            dom = _render(url, profile, png)
            pages = [(p, s) for p in lineage["parents"] for s in p["stages"]][:max_run_pages]
            # The screenshot of a run page: one that has dataset inputs to show (a training stage).
            shown = next((i for i, (_, s) in enumerate(pages) if s["datasets"]), 0)
            for i, (parent, stage) in enumerate(pages):
                run_url = f"{base}/#/experiments/{lineage['experiment_id']}/runs/{stage['run_id']}"
                shot = png.with_name(f"{png.stem}-run.png") if i == shown else None
                checks.append(
                    check_run_page(dom_texts(_render(run_url, profile, shot)), stage, parent["name"])
                )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    dom_path = png.with_suffix(".dom.html")
    dom_path.write_text(dom)
    texts = dom_texts(dom)
    return {
        "url": url,
        "screenshot": str(png),
        "dom": str(dom_path),
        "parents_shown": sorted(p["name"] for p in lineage["parents"] if p["name"] in texts),
        "run_pages": checks,
        "lineage": lineage,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m slingshot.report_ui TRACKING_URI EXPERIMENT OUT.png", file=sys.stderr)
        return 2
    result = screenshot_runs_page(args[0], args[1], args[2], Path(args[2]).parent)
    print(json.dumps({k: v for k, v in result.items() if k != "lineage"}, indent=2))
    return 0 if all(c["ok"] for c in result["run_pages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
