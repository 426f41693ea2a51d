"""The manifest: written last and atomically; its presence means the stage is done.

It records what downstream needs (paths) and the lineage: the config digest, the
upstream manifests' digests, the MLflow run, Slurm job ids and restarts, software
versions, wall time and tokens.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from slingshot.io import atomic_write_json, sha256_file

_PACKAGES = (
    "slingshot",
    "torch",
    "transformers",
    "megatron-core",
    "mlflow",
    "submitit",
    "snakemake",
    "reasoning-gym",
    "vllm",
)


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(cwd: Path | None = None) -> str | None:
    """The commit of the slingshot checkout (not of the directory the pipeline runs in)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def write_manifest(path: Path, record: dict[str, Any], upstream_paths: dict[str, Path]) -> dict[str, Any]:
    manifest = {
        **record,
        "upstream": {key: {"path": str(p), "sha256": sha256_file(p)} for key, p in upstream_paths.items()},
        "software": software_versions(),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(path, manifest)
    return manifest
