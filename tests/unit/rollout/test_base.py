"""Choosing a rollout backend from the config."""

import sys

import pytest
from tiny_hf import tiny_llama


def test_vllm_where_it_is_not_installed_names_the_key_and_the_install(monkeypatch):
    from slingshot.config import RolloutConfig
    from slingshot.rollout import make_rollout

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM imports
    with pytest.raises(ImportError, match=r"rollout.backend: vllm needs vLLM installed: .*make install-vllm"):
        make_rollout(RolloutConfig(backend="vllm"), tiny_llama(), None, [])
