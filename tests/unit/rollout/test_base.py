"""Choosing a rollout backend from the config."""

import pytest
from tiny_hf import tiny_llama


def test_the_unwritten_vllm_backend_says_so():
    from slingshot.config import RolloutConfig
    from slingshot.rollout import make_rollout

    with pytest.raises(NotImplementedError, match="rollout.backend 'vllm' is not implemented yet"):
        make_rollout(RolloutConfig(backend="vllm"), tiny_llama(), None, [])
