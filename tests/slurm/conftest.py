"""Tests on the real dev Slurm cluster (cluster/dev): brought up once per session (idempotent)."""

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# tryfirst: pytest-xdist reads the xdist_group marker in its own modifyitems hook, so the
# marker must be on the items before that hook runs.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.slurm)
            # One shared cluster: under pytest-xdist (`make test`) these run one at a time on
            # one worker (--dist loadgroup) while the other worker runs the CPU-bound tests.
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session", autouse=True)
def dev_cluster():
    up = subprocess.run(
        ["bash", str(REPO / "cluster" / "dev" / "up.sh")], capture_output=True, text=True, timeout=600
    )
    if up.returncode != 0:
        pytest.fail(f"the dev Slurm cluster did not come up:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")
    yield


@pytest.fixture(autouse=True)
def _no_stray_jobs(tmp_path):
    yield
    # A failed test must not leave its jobs running into the next one (only its own jobs:
    # others may be using the cluster).
    for state in tmp_path.glob("work/**/launch.json"):
        key = state.parent.relative_to(tmp_path / "work")
        if (tmp_path / "results" / key / "manifest.json").is_file():
            continue  # finished (its job may still be completing)
        for sub in json.loads(state.read_text())["submissions"]:
            subprocess.run(["scancel", sub["job_id"]], check=False)
