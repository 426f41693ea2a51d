"""The vLLM engine in a process of its own, so generation runs while the trainer updates.

One-step-async ProRL (``rollout.async_steps: 1``) asks the engine for step t+1's rollouts
and updates on step t's at the same time; in one process the two would take turns on the
interpreter and the device, in two they overlap. :class:`ProcessRollout` is the same
``RolloutBackend`` as :class:`~slingshot.rollout.vllm.VLLMRollout`, which it runs in a
spawned child: requests and replies go through two queues, one at a time, in order.

Weights cross as tensors through ``torch.multiprocessing``: CPU tensors move into shared
memory (a parameter's storage moves there in place on the first push, later pushes copy
nothing), CUDA tensors go as IPC handles. The trainer waits for the child's reply, so the
child never reads a tensor the optimizer is changing. Verified on CPU; the CUDA IPC path
(the engine process on the trainer's GPU) is written for GPUs and NOT verified here.

A rollout records the weight version the trainer had pushed when it asked for it: the
child serves requests in order, so that is the version the engine sampled with.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from slingshot.rollout.base import Rollout, Seeds
from slingshot.rollout.vllm import VLLMRollout, WeightSyncTimeout, engine_weights

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from slingshot.config import RolloutConfig

ENGINE_START_TIMEOUT_S = 600.0  # the engine's start (seconds on CPU, minutes with CUDA graphs)
_POLL_S = 1.0  # how often a wait checks that the child is still alive


class EngineProcessError(RuntimeError):
    """The engine process failed or exited; the message holds its traceback or exit code."""


def _serve(
    model_config: PretrainedConfig,
    model_dtype: str,
    stop_token_ids: list[int],
    cfg: RolloutConfig,
    stage: str,
    requests: Any,
    replies: Any,
) -> None:
    """The child: the first request carries the weights the engine starts with."""
    try:
        kind, weights = requests.get()
        assert kind == "weights", kind
        engine = VLLMRollout.from_weights(model_config, weights, model_dtype, stop_token_ids, cfg, stage)
        del weights  # shared memory is released once neither process holds it
        replies.put(("ok", None))
        while True:
            kind, payload = requests.get()
            if kind == "close":
                engine.close()
                return
            if kind == "generate":
                replies.put(("ok", engine.generate(**payload)))
            elif kind == "weights":
                engine.push_weights(payload)
                del payload
                replies.put(("ok", None))
            else:
                raise ValueError(f"unknown engine request {kind!r}")
    except BaseException:
        replies.put(("error", traceback.format_exc()))


class ProcessRollout:
    """:class:`~slingshot.rollout.vllm.VLLMRollout` in a spawned process (same interface)."""

    def __init__(
        self, model: torch.nn.Module, stop_token_ids: list[int], cfg: RolloutConfig, stage: str = "rollout"
    ):
        self.stage = stage
        self.sync_timeout_s = cfg.sync_timeout_s
        self.weight_version = 0
        self._lock = threading.Lock()  # one request in flight: replies arrive in request order
        context = mp.get_context("spawn")  # the child initialises its own CUDA and vLLM
        self._requests = context.Queue()
        self._replies = context.Queue()
        model_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self._process = context.Process(
            target=_serve,
            args=(model.config, model_dtype, list(stop_token_ids), cfg, stage, self._requests, self._replies),
            name=f"slingshot-rollout-{stage}",
            daemon=True,  # the engine dies with the trainer
        )
        self._process.start()
        self._call(("weights", engine_weights(model)), ENGINE_START_TIMEOUT_S, "starting the vLLM engine")

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: Seeds = None,
    ) -> list[list[Rollout]]:
        request = dict(
            prompts=prompts,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        version = self.weight_version  # the engine serves in order: these are its weights then
        groups = self._call(("generate", request), None, "generating")
        for group in groups:
            for rollout in group:
                rollout.weight_version = version
        return groups

    def sync_weights(self, model: torch.nn.Module, step: int | None = None) -> None:
        """Push ``model``'s weights; raises ``WeightSyncTimeout`` past ``rollout.sync_timeout_s``."""
        at = f"stage {self.stage}, step {step if step is not None else self.weight_version + 1}"
        try:
            self._call(("weights", engine_weights(model)), self.sync_timeout_s, f"{at}: the weight push")
        except TimeoutError as error:
            raise WeightSyncTimeout(
                f"{at}: the vLLM weight push did not finish within rollout.sync_timeout_s="
                f"{self.sync_timeout_s:g} s (engine process {self._process.pid})"
            ) from error
        self.weight_version += 1

    def _call(self, request: tuple[str, Any], timeout_s: float | None, what: str) -> Any:
        with self._lock:
            if not self._process.is_alive():
                raise EngineProcessError(
                    f"stage {self.stage}: the vLLM engine process has exited (code {self._process.exitcode})"
                )
            self._requests.put(request)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                try:
                    status, value = self._replies.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if not self._process.is_alive():
                        raise EngineProcessError(
                            f"stage {self.stage}: the vLLM engine process exited (code "
                            f"{self._process.exitcode}) while {what}"
                        ) from None
                    if deadline is not None and time.monotonic() > deadline:
                        # The engine may hold half-pushed weights: it is not used again.
                        self._process.kill()
                        self._process.join()
                        raise TimeoutError(f"{what} took longer than {timeout_s:g} s") from None
        if status == "error":
            raise EngineProcessError(
                f"stage {self.stage}: the vLLM engine process failed while {what}:\n{value}"
            )
        return value

    def close(self) -> None:
        if self._process.is_alive():
            self._requests.put(("close", None))
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
