"""``stages.pretrain.init_model``: continued pretraining from an HF directory. Its first phase
starts the chain, later phases continue from the previous one, and the data stage must
tokenize with the model's own tokenizer (refused by name otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slingshot.plan import build_plan
from slingshot.validate import ConfigError, load_pipeline_config


def _model_dir(path: Path, vocab: dict[str, int]) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"vocab_size": 8}))
    (path / "model.safetensors").write_text("{}")
    (path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
    return path


def _config(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    return cfg


def test_first_phase_imports_and_later_phases_continue(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "base", {"a": 0, "b": 1})
    cfg = load_pipeline_config(
        _config(
            tmp_path, f"data:\n  tokenizer: {{path: {model}}}\nstages:\n  pretrain: {{init_model: {model}}}\n"
        )
    )
    plan = build_plan(cfg)
    phase1, phase2 = plan.node("main", "pretrain-phase1"), plan.node("main", "pretrain-phase2")
    assert phase1.init_model == str(model) and phase1.model_from is None and phase1.upstream == ["data"]
    assert phase2.init_model is None and phase2.model_from == phase1.key


def test_data_tokenizer_must_be_the_models(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "base", {"a": 0, "b": 1})
    with pytest.raises(
        ConfigError, match=r"stages\.pretrain\.init_model: the data stage trains its own tokenizer"
    ):
        load_pipeline_config(_config(tmp_path, f"stages:\n  pretrain: {{init_model: {model}}}\n"))
    other = _model_dir(tmp_path / "other", {"a": 1, "b": 0})
    with pytest.raises(
        ConfigError, match=r"data\.tokenizer\.path '.*other' is not the tokenizer of '.*base'"
    ):
        load_pipeline_config(
            _config(
                tmp_path,
                f"data:\n  tokenizer: {{path: {other}}}\nstages:\n  pretrain: {{init_model: {model}}}\n",
            )
        )
    copy = _model_dir(tmp_path / "copy", {"a": 0, "b": 1})  # the same tokenizer in another directory
    load_pipeline_config(
        _config(
            tmp_path, f"data:\n  tokenizer: {{path: {copy}}}\nstages:\n  pretrain: {{init_model: {model}}}\n"
        )
    )
