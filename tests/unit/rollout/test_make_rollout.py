"""Choosing a rollout backend (slingshot.rollout.make_rollout), and the package's import layering:
``base`` is the interface and imports no backend, so a backend importing ``base`` closes no cycle."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import torch

import slingshot.rollout
from slingshot.config import RolloutConfig
from slingshot.rollout import make_rollout
from slingshot.rollout.hf import HFRollout

PACKAGE = Path(slingshot.rollout.__file__).parent


def _imports(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("slingshot.rollout")}


def test_hf_backend_takes_the_tokenizer_pad_and_the_stop_ids():
    model = torch.nn.Linear(1, 1)
    backend = make_rollout(RolloutConfig(backend="hf"), model, SimpleNamespace(pad_token_id=3), [7, 9])
    assert isinstance(backend, HFRollout)
    assert (backend.model, backend.pad_token_id, backend.stop_token_ids) == (model, 3, [7, 9])


def test_the_interface_imports_no_backend():
    assert _imports(PACKAGE / "base.py") == set()
    assert _imports(PACKAGE / "hf.py") == {"slingshot.rollout.base"}
    assert _imports(PACKAGE / "vllm.py") == {"slingshot.rollout.base"}
