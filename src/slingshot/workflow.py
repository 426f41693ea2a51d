"""Helpers the Snakefile uses (kept here so they are importable and tested)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from slingshot.config import PipelineConfig
from slingshot.io import atomic_write_text

RESOLVED_NAME = "pipeline-config.yaml"


def write_resolved_config(raw: dict[str, Any], cfg: PipelineConfig) -> Path:
    """Write the merged config the DAG was built from (only when it changed: no needless mtime churn)."""
    path = cfg.work_dir / RESOLVED_NAME
    text = yaml.safe_dump(raw, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return path.resolve()
