"""A ``format: megatron`` user corpus is a .bin/.idx prefix: missing files fail the DAG check by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from slingshot.validate import ConfigError, load_pipeline_config


def _config(tmp_path: Path, prefix: Path) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  extra_corpora:\n    - {{name: web, path: {prefix}, format: megatron}}\n")
    return cfg


def test_megatron_prefix_needs_both_files(tmp_path: Path) -> None:
    prefix = tmp_path / "web_text_document"
    with pytest.raises(
        ConfigError, match=r"data\.extra_corpora\.0\.path: '.*web_text_document\.bin' does not exist"
    ):
        load_pipeline_config(_config(tmp_path, prefix))
    prefix.with_suffix(".bin").write_bytes(b"\0\0")
    with pytest.raises(
        ConfigError, match=r"'.*web_text_document\.idx' does not exist \(path is the \.bin/\.idx prefix\)"
    ):
        load_pipeline_config(_config(tmp_path, prefix))
    prefix.with_suffix(".idx").write_bytes(b"\0")
    assert load_pipeline_config(_config(tmp_path, prefix)).data.extra_corpora[0].format == "megatron"
