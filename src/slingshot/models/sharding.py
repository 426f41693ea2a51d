"""FSDP2 for the HF-model stages (SFT, RLP, ProRL): how a model is sharded, generated with,
reduced and exported. One place, so every stage shards the same way.

- :func:`resolve_parallel`: ``data_parallel: auto`` is FSDP2 on GPUs and a gradient
  all-reduce over gloo (CPU processes); ``fsdp`` shards on gloo too (the CPU tests of the
  GPU path), ``allreduce`` replicates on GPUs.
- :func:`shard_model`: each decoder layer its own FSDP2 unit, then the root. Every stage's
  loss is normalised by the global token (or thought) count, so each rank's loss is its
  share of the global loss and the gradient is the SUM over ranks, where FSDP2 averages:
  SFT scales its loss by the world size, the RL update :func:`sum_sharded_gradients`.
  A frozen model (a reference, an EMA teacher) is sharded the same way on the same mesh,
  so the EMA update and the reference reset are local, shard by shard.
- :func:`gathered_for_generation`: HF ``generate`` runs one forward per token, and each
  forward of an FSDP2 unit all-gathers it. Ranks generate different prompts, so they
  stop at different lengths: the model is all-gathered ONCE before the call and kept
  whole for it (no collective inside), then resharded. It holds the full model on every
  rank for the call, which generation needs anyway.
- :func:`full_model`: the model as a plain HF model on rank 0 (a collective: every rank
  calls it), for ``save_pretrained``.
- :func:`full_value`: a DTensor statistic (a norm over sharded parameters) as a tensor.

Every rank of a sharded model must also run the same number of forward passes outside
generation: the RL stages size their micro-batches for the widest rank's batch
(:func:`slingshot.train.logprobs.lockstep_width`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from slingshot.config import MemoryConfig
    from slingshot.dist import DistEnv

ParallelMode = Literal["auto", "fsdp", "allreduce"]


def resolve_parallel(mode: ParallelMode, dist: DistEnv) -> str:
    """``none`` (one process), ``fsdp`` or ``allreduce``.

    ``fsdp`` asked for explicitly in a process group of one still shards (FSDP2 on one GPU:
    the GPU check exercises the multi-GPU code path that way)."""
    if mode == "fsdp" and dist.backend is not None:
        return "fsdp"
    if dist.world_size == 1:
        return "none"
    if mode == "auto":
        return "fsdp" if dist.device.type == "cuda" else "allreduce"
    return mode


def shard_model(
    model: torch.nn.Module, device: torch.device, bf16: bool = True, frozen: bool = False
) -> None:
    """FSDP2 in place: each decoder layer its own unit (gathered just in time), then the
    root; bf16 compute with fp32 reduction on GPUs when ``bf16``; gradients summed over ranks.

    The root unit (embeddings, final norm, output layer) of a trained model stays gathered
    from its forward to its backward (FSDP2's default: the backward needs it at once); a
    ``frozen`` model has no backward, so its root is resharded after every forward and its
    parameters are shards between passes, like the policy's (the EMA update pairs them)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if device.type == "cuda" and bf16
        else MixedPrecisionPolicy()
    )
    layers = getattr(getattr(model, "model", None), "layers", None)
    for layer in layers or []:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy, reshard_after_forward=True if frozen else None)


def sum_sharded_gradients(model: torch.nn.Module, world_size: int) -> None:
    """FSDP2's reduce-scatter AVERAGES gradients over ranks; a loss that is each rank's share
    of a globally normalised loss needs their sum: the reduced shards times the world size.
    (``set_gradient_divide_factor(1.0)`` is not used: gloo has no pre-multiplied sum, and
    with ``set_force_sum_reduction_for_comms`` it mis-scaled accumulated micro-batches in
    torch 2.13 on gloo.)"""
    if world_size == 1:
        return
    for param in model.parameters():
        if param.grad is not None:
            param.grad.mul_(world_size)


def shard_policy_and_copy(
    mode: ParallelMode,
    dist: DistEnv,
    policy: torch.nn.Module,
    frozen: torch.nn.Module | None,
    memory: MemoryConfig,
    stage: str,
) -> bool:
    """An RL stage's data parallelism (``stages.<stage>.data_parallel``): under FSDP2 the
    policy and its frozen copy (ProRL's reference, RLP's EMA teacher) are sharded on the
    same mesh, in place; True when they were. Build the optimizer after this call."""
    if resolve_parallel(mode, dist) != "fsdp":
        return False
    if frozen is not None and memory.frozen_copy == "cpu":
        raise ValueError(
            f"stages.{stage}.memory.frozen_copy: cpu is for a replicated frozen copy; under FSDP2 "
            f"(stages.{stage}.data_parallel: {mode} on this job) it is sharded over the ranks "
            "instead: set frozen_copy: device (or data_parallel: allreduce)"
        )
    shard_model(policy, dist.device, memory.bf16)
    if frozen is not None:
        shard_model(frozen, dist.device, memory.bf16, frozen=True)
    return True


def is_sharded(model: torch.nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _units(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


@contextmanager
def gathered_for_generation(model: torch.nn.Module) -> Iterator[None]:
    """Within the block ``model``'s forward passes need no collective: every FSDP2 unit is
    all-gathered on entry (every rank enters together) and kept whole until the exit
    reshards it. A model that is not sharded: nothing to do."""
    units = _units(model)
    if not units:
        yield
        return
    # Each unit's own setting, restored on exit (the root's differs: see shard_model).
    before = [_reshards_after_forward(unit, unit is model) for unit in units]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)  # type: ignore[operator]
        unit.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        for unit, reshard in zip(units, before, strict=True):
            unit.reshard()  # type: ignore[operator]
            unit.set_reshard_after_forward(reshard, recurse=False)  # type: ignore[operator]


def _reshards_after_forward(unit: torch.nn.Module, is_root: bool) -> bool:
    """Whether an FSDP2 unit frees its gathered parameters after each forward. FSDP2 has no
    public getter, and it applies its default for the root (False) only at the first
    forward, so a root still on the default is read as False."""
    state = unit._get_fsdp_state()  # type: ignore[operator]
    if is_root and state._auto_reshard_after_forward:
        return False
    return any(group._reshard_after_forward for group in state._fsdp_param_groups)


def full_model(model: torch.nn.Module, is_main: bool) -> PreTrainedModel | None:
    """``model`` as a plain (unsharded, CPU for a sharded one) HF model on the main rank;
    None elsewhere. Collective for a sharded model: every rank must call it."""
    if not is_sharded(model):
        return model if is_main else None  # type: ignore[return-value]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    plain = AutoModelForCausalLM.from_config(model.config)  # type: ignore[arg-type]
    plain.load_state_dict(full)
    return plain


def full_value(value: torch.Tensor) -> torch.Tensor:
    """A (possibly DTensor) result as a plain tensor: a collective for a DTensor."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value
