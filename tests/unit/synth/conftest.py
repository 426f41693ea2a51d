"""Shared fixtures for the synth package tests: a tiny proxy model and teacher-solved pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
from stages import tiny_model_dir

from slingshot.data.tasks import load_entries
from slingshot.data.teacher import ProceduralTeacher


@pytest.fixture(scope="module")
def tiny_model(small_data, tmp_path_factory) -> Path:
    return tiny_model_dir(
        tmp_path_factory.mktemp("proxy") / "model", Path(small_data["outputs"]["tokenizer_dir"])
    )


@pytest.fixture(scope="module")
def train_entries(small_data) -> list[dict]:
    return load_entries(small_data["outputs"]["tasks_train"])


@pytest.fixture(scope="module")
def teacher_pairs(train_entries) -> list[tuple[str, str]]:
    """(question, correct teacher completion) of the first 7 training tasks."""
    teacher = ProceduralTeacher(error_rate=0.0, seed=0)
    return [(e["question"], teacher.solve(e).completion) for e in train_entries[:7]]
