"""Fixtures for the launcher's unit tests: pipeline configs on the local backends, a site
file, and Slurm commands that exist but do nothing (submitit's Slurm executor only checks
that ``srun`` is on PATH; nothing here may reach a real cluster)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from slingshot.config import deep_merge

SLURM_COMMANDS = ("srun", "sbatch", "squeue", "sacct", "scancel", "scontrol")

# A site whose env values need quoting in the batch script's shell.
SITE: dict[str, Any] = {
    "name": "testsite",
    "default_partition": "cpu",
    "partitions": {
        "cpu": {"cpus_per_node": 8, "max_time_min": 120},
        "gpu": {"gpus_per_node": 4, "max_nodes": 2},
    },
    "account": "site-account",
    "qos": "normal",
    "setup": ["module load python"],
    "env": {"GREETING": "hello world; echo injected", "QUOTE": "it's $HOME"},
    "sbatch": {"exclusive": "user"},
}


@pytest.fixture
def no_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Slurm's commands on PATH as scripts that fail: enough to build a Slurm executor."""
    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    for name in SLURM_COMMANDS:
        script = bin_dir / name
        script.write_text("#!/bin/sh\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    return bin_dir


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "testsite.yaml"
    path.write_text(yaml.safe_dump(SITE))
    return path


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a pipeline config under tmp_path (results/ and work/ there too) and return its path."""

    def write(overrides: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
        raw = deep_merge(
            {
                "pipeline": {
                    "name": "unit",
                    "results_dir": str(tmp_path / "results"),
                    "work_dir": str(tmp_path / "work"),
                },
                "launcher": {"backend": "inprocess", "poll_interval_s": 0.05},
                "stages": {
                    "pretrain": {
                        "phases": [{"name": "p1", "token_fraction": 1.0, "blend": {"general": 1.0}}]
                    },
                    "rlp": {"enabled": False},
                    "synth": {"enabled": False},
                    "sft": {"enabled": False},
                    "prorl": {"enabled": False},
                    "evaluate": {"models": ["pretrain"], "n_samples": 1, "k": [1]},
                },
            },
            overrides or {},
        )
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


@pytest.fixture
def keep_usr2_handler():
    """A StageJob run in this process installs its USR2 handler here: put pytest's back."""
    previous = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, previous)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the session's stage runs (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
