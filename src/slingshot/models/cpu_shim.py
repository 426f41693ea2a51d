"""The ONE place where Megatron-Core 0.16.1 is made to run on a CPU-only torch.

Megatron-Core hard-codes CUDA in a handful of spots (device='cuda' tensors, CUDA RNG
state, `torch.cuda.synchronize`, `tensor.type() == 'torch.cuda.FloatTensor'` checks).
`apply()` patches exactly those, only when no GPU is present, and is idempotent. On a
machine with CUDA it does nothing, so GPU runs use Megatron unmodified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False


def _is_cuda_device(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA placement to the CPU at the torch-function level.

    - `device='cuda'` in factory calls: `torch.tensor/zeros(..., device='cuda')` in
      `optimizer.MixedPrecisionOptimizer.__init__`, `clip_grads.get_grad_norm_fp32`,
      `grad_scaler`, `param_and_grad_buffer`, `schedules.forward_backward_*`.
    - `Tensor.cuda()` / `.to('cuda')`: `optimizer.load_state_dict`, `tensor_parallel.data`.
    - `Tensor.type()` with no argument reports 'torch.cuda.*': the dtype checks in
      `clip_grads.clip_grad_by_total_norm_fp32`, `Float16OptimizerWithFloat16Params.__init__`
      and `DistributedOptimizer._build_model_and_main_param_groups`.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """Named RNG streams on the CPU generator, replacing Megatron's CUDA-state tracker.

    Needed by `tensor_parallel.random.model_parallel_cuda_manual_seed` (which calls
    `tracker.add`) and by every `get_cuda_rng_tracker().fork()` (TP weight init in
    `_initialize_affine_weight_gpu`, attention dropout). Keeps the GPU semantics: each
    TP rank gets its own stream, and the default stream is restored after a fork.
    """

    def __init__(self, use_cudagraphable_rng: bool = False, is_inference_rng_tracker: bool = False) -> None:
        self.use_cudagraphable_rng = False
        self.is_inference_rng_tracker = is_inference_rng_tracker
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_ or name in self.states_:
            raise Exception(f"rng state {name} / seed {seed} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def apply() -> bool:
    """Patch Megatron-Core for a CPU-only torch. Returns True when the shim is active."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    from megatron.core.tensor_parallel import random as mcore_random

    # attention/rotary/gpt_model/tensor_parallel.layers build tensors on
    # `torch.cuda.current_device()` (e.g. `Attention._allocate_memory`, `RotaryEmbedding.forward`).
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    # dist_checkpointing `FullyParallelSaveStrategyWrapper`, `filesystem_async`, and
    # `DistributedDataParallel` buffer (de)allocation call it; nothing to wait for on CPU.
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    # `initialize_rng_tracker` instantiates this class by its module-level name.
    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker  # type: ignore[misc,assignment]
    mcore_random.initialize_rng_tracker(force_reset=True)
    # Pushed once for the life of the process: see CudaToCpuMode's docstring.
    CudaToCpuMode().__enter__()
    _APPLIED = True
    return True


def is_applied() -> bool:
    return _APPLIED
