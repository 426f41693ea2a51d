"""Tests on the real dev Slurm cluster (cluster/dev): brought up once per session (idempotent)."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.fspath).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session", autouse=True)
def dev_cluster():
    up = subprocess.run(
        ["bash", str(REPO / "cluster" / "dev" / "up.sh")], capture_output=True, text=True, timeout=600
    )
    if up.returncode != 0:
        pytest.fail(f"the dev Slurm cluster did not come up:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")
    yield
