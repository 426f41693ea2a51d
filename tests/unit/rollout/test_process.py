"""The vLLM engine in its own process (slingshot.rollout.process), real engine on CPU: it
generates what the in-process engine generates, takes pushes, stamps versions, and a hung
or dead engine process fails the caller by name instead of hanging it."""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import pytest
import torch
from tiny_hf import engine_llama

from slingshot.config import RolloutConfig

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make install-vllm)"
    ),
]

PROMPTS = [[3, 17, 42, 8], [5, 9], [60, 61, 62, 63, 64, 65, 66]]


def _greedy(backend) -> list[list[int]]:
    return [g[0].completion_ids for g in backend.generate(PROMPTS, 1, 10, temperature=0.0)]


def test_the_engine_process_generates_what_the_in_process_engine_does_and_takes_pushes():
    from slingshot.rollout.process import ProcessRollout
    from slingshot.rollout.vllm import VLLMRollout

    model = engine_llama()
    cfg = RolloutConfig(backend="vllm", async_steps=1)
    remote = ProcessRollout(model, [], cfg, stage="test")
    local = VLLMRollout(model, [], RolloutConfig(backend="vllm"), stage="test")
    try:
        assert remote._process.pid != os.getpid()
        assert _greedy(remote) == _greedy(local)
        sampled = remote.generate(PROMPTS, 2, 8, temperature=1.0, seed=3)
        assert sampled == local.generate(PROMPTS, 2, 8, temperature=1.0, seed=3)  # ids, log-probs, versions
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        remote.sync_weights(model, step=1)
        local.sync_weights(model, step=1)
        assert _greedy(remote) == _greedy(local)
        assert remote.weight_version == 1
        assert all(r.weight_version == 1 for g in remote.generate(PROMPTS, 1, 4, 0.0) for r in g)
    finally:
        remote.close()
        local.close()
    assert not remote._process.is_alive()


def test_a_hung_engine_process_times_the_push_out_by_name_and_a_dead_one_is_reported():
    from slingshot.rollout.process import EngineProcessError, ProcessRollout
    from slingshot.rollout.vllm import WeightSyncTimeout

    model = engine_llama()
    backend = ProcessRollout(
        model, [], RolloutConfig(backend="vllm", async_steps=1, sync_timeout_s=2.0), "prorl-x"
    )
    os.kill(backend._process.pid, signal.SIGSTOP)  # the engine stops answering, as a hung transfer does
    started = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match=r"stage prorl-x, step 7: .*rollout.sync_timeout_s=2 s"):
        backend.sync_weights(model, step=7)
    assert 2.0 <= time.monotonic() - started < 10.0
    assert backend.weight_version == 0
    # The timed-out engine is killed (it may hold half the weights): later calls say so.
    with pytest.raises(EngineProcessError, match="stage prorl-x: the vLLM engine process has exited"):
        backend.generate([[1, 2]], 1, 2, 0.0)
    backend.close()

    crashing = ProcessRollout(model, [], RolloutConfig(backend="vllm", async_steps=1), "prorl-y")
    os.kill(crashing._process.pid, signal.SIGKILL)
    crashing._process.join()
    with pytest.raises(EngineProcessError, match=r"stage prorl-y: .*exited \(code -9\)"):
        crashing.generate([[1, 2]], 1, 2, 0.0)
    crashing.close()
