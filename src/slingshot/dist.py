"""The one distributed layer: the job's environment and every collective the stages use.

A stage job runs one task per GPU (or per CPU process). submitit's
TorchDistributedEnvironment exports RANK/WORLD_SIZE/MASTER_ADDR/... from the Slurm (or
local) job; then ``init_process_group``. No torchrun: it swallows the signals the
checkpoint protocol relies on.

On GPUs the default group is created with ``cpu:gloo,cuda:nccl``, so a collective on a
CPU tensor (a stop flag, a metric, a Python object) goes through gloo and one on a CUDA
tensor through NCCL. Groups made elsewhere (Megatron's data-parallel group is NCCL-only)
cannot take CPU tensors: ``all_reduce`` moves a tensor to the rank's device for them and
back. Every function here is a no-op (identity) in a single process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")
R = TypeVar("R")

CPU_BACKEND = "gloo"
GPU_BACKEND = "cpu:gloo,cuda:nccl"


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: rank, world size, local rank, backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size(group: Any = None) -> int:
    return tdist.get_world_size(group) if is_initialized() else 1


def _in_submitit_job() -> bool:
    return "SUBMITIT_FOLDER" in os.environ or "SUBMITIT_EXECUTOR" in os.environ


def init_distributed(timeout_s: float = 600.0) -> DistEnv:
    """Initialise torch.distributed for a multi-task job; a single task gets no process group."""
    if is_initialized():
        return DistEnv(
            tdist.get_rank(),
            tdist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", 0)),
            tdist.get_backend(),
        )
    if _in_submitit_job():
        import submitit

        if submitit.JobEnvironment().num_tasks <= 1:
            return DistEnv()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    elif int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistEnv()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = GPU_BACKEND if torch.cuda.is_available() else CPU_BACKEND
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv(tdist.get_rank(), tdist.get_world_size(), local_rank, backend)


def shutdown_distributed() -> None:
    if is_initialized():
        tdist.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


def _needs_device(group: Any) -> bool:
    """True when ``group`` has no CPU backend (NCCL only): CPU tensors must move to the GPU."""
    backend = str(tdist.get_backend(group))
    return "gloo" not in backend and torch.cuda.is_available()


def all_reduce(tensor: torch.Tensor, op: str = "sum", group: Any = None) -> torch.Tensor:
    """In-place all-reduce of ``tensor`` (``sum``, ``mean`` or ``max``) over ``group``."""
    if not is_initialized() or world_size(group) == 1:
        return tensor
    reduce_op = {"sum": tdist.ReduceOp.SUM, "mean": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX}[op]
    work = tensor
    if tensor.device.type == "cpu" and _needs_device(group):
        work = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    tdist.all_reduce(work, op=reduce_op, group=group)
    if op == "mean":
        work /= world_size(group)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def all_reduce_mean(values: Mapping[str, float], group: Any = None) -> dict[str, float]:
    """The mean over ranks of a dict of floats (every rank must pass the same keys)."""
    if not is_initialized() or world_size(group) == 1:
        return dict(values)
    keys = sorted(values)
    box = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    all_reduce(box, "mean", group)
    return dict(zip(keys, box.tolist(), strict=True))


def all_reduce_sum(values: Mapping[str, float], group: Any = None) -> dict[str, float]:
    """The sum over ranks of a dict of floats (every rank must pass the same keys)."""
    if not is_initialized() or world_size(group) == 1:
        return dict(values)
    keys = sorted(values)
    box = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    all_reduce(box, "sum", group)
    return dict(zip(keys, box.tolist(), strict=True))


def all_reduce_scalar(value: float, op: str = "sum", group: Any = None) -> float:
    if not is_initialized() or world_size(group) == 1:
        return value
    box = torch.tensor([float(value)], dtype=torch.float64)
    return float(all_reduce(box, op, group).item())


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank."""
    return all_reduce_scalar(1.0 if flag else 0.0, "max") > 0


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small values such as paths)."""
    if not is_initialized():
        return obj
    box: list[Any] = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (pickled)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def gather_objects(obj: T, group: Any = None) -> list[T] | None:
    """Every member's ``obj`` (in group-rank order) on the group's first rank; None elsewhere."""
    if not is_initialized():
        return [obj]
    dst = tdist.get_global_rank(group, 0) if group is not None else 0
    out: list[Any] | None = [None] * tdist.get_world_size(group) if tdist.get_rank() == dst else None
    tdist.gather_object(obj, out, dst=dst, group=group)
    return out


def all_gather_flat(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order (pickled; the same list on every rank)."""
    return [item for part in all_gather_objects(items) for item in part]


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items (the first
    ``n % world`` ranks take one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def minibatch_shard(n: int, chunk: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s indices of ``n`` items cut into consecutive mini-batches of ``chunk``:
    its contiguous share of EVERY mini-batch, in order, so that mini-batch k on each rank
    is its part of the one-process run's mini-batch k (each chunk must divide by ``world``)."""
    out: list[int] = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        if size % world:
            raise ValueError(f"a mini-batch of {size} items does not divide over {world} ranks")
        share = size // world
        out += range(start + rank * share, start + (rank + 1) * share)
    return out


def all_reduce_grads(model: torch.nn.Module, op: str = "sum") -> None:
    """Reduce gradients over ranks in one flat buffer (``sum`` when the loss is already
    globally normalised, ``mean`` when each rank's loss is a local mean)."""
    if not is_initialized() or world_size() == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    all_reduce(flat, op)
    for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(synced)


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """The total gradient norm before clipping; gradients are clipped in place if ``max_norm > 0``.

    FSDP2 gradients are DTensors: the norm torch computes is then a DTensor too, and
    ``full_tensor()`` reduces it over the shards, so every rank gets the global norm.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# --------------------------------------------------------------------------- sharded work


def shard_indices(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous slice of ``n`` items split over ``world`` ranks.

    Slices are in rank order and differ in size by at most one, so concatenating every
    rank's results in rank order restores the items' order (:func:`all_gather_ordered`).
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def all_gather_ordered(local: list[T]) -> list[T]:
    """Every rank's list joined in rank order (on every rank): the inverse of :func:`shard_indices`."""
    return [item for part in all_gather_objects(local) for item in part]


def map_sharded(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]`` with each rank computing its :func:`shard_indices` slice;
    every rank gets the whole list, in order. Every rank must call it with the same items,
    and ``fn`` must not depend on the rank (seed from the item), so any world size gives the
    one-process result."""
    mine = [fn(items[i]) for i in shard_indices(len(items), rank(), world_size())]
    return all_gather_ordered(mine)
