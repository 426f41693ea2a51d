"""Sharded Megatron-Core checkpoints (dist_checkpointing) of a GPT model and its optimizer,
and the checkpointed state of a Megatron training job built on them.

Every rank calls ``save_sharded``/``load_sharded`` with the same directory; each writes
or reads its own shards (TP/PP/distributed-optimizer aware), so a checkpoint can be
resumed at any data-parallel size ("dp_reshardable"). Found on megatron-core 0.16.1
(CPU): the distributed optimizer's state must exist before loading (its
``_init_optimizer_states_with_dummy_values``), and loading copies into leaf main
params, so it runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from slingshot import dist
from slingshot.checkpoint import load_torch, rng_state, save_torch, set_rng_state
from slingshot.io import atomic_dir, atomic_write_text

_META = {"distrib_optim_sharding_type": "dp_reshardable"}
COUNTERS_FILE = "pretrain_state.pt"  # written by rank 0: step, data position, consumption
SHARDS_DIR = "mcore"  # dist_checkpointing shards of model + optimizer


def save_sharded(directory: str | Path, model: Any, optimizer: Any) -> None:
    """Collective: write model + optimizer shards into ``directory`` (created by rank 0)."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if dist.rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    model_sd = model.sharded_state_dict()
    dist_checkpointing.save(
        {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, metadata=_META)},
        str(directory),
    )
    dist.barrier()


def load_sharded(directory: str | Path, model: Any, optimizer: Any | None = None) -> None:
    """Collective: load model (and optimizer, if given) shards from ``directory`` in place."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no Megatron checkpoint at {directory}")
    model_sd = model.sharded_state_dict()
    request: dict[str, Any] = {"model": model_sd}
    if optimizer is not None:
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            if hasattr(opt, "_init_optimizer_states_with_dummy_values"):
                opt._init_optimizer_states_with_dummy_values()  # load fills existing state in place
        request["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=_META)
    loaded = dist_checkpointing.load(request, str(directory))
    model.load_state_dict(loaded["model"])
    if optimizer is not None:
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])


class MegatronState:
    """model + optimizer (sharded, every rank writes) + counters and RNG (small files).

    ``counters``: the job's plain values (steps, data position, ...), written by rank 0.
    ``expect``: counters a loaded checkpoint must match (e.g. the phase and its blend), so a
    resume never silently changes what the job trains on.
    """

    def __init__(self, model: Any, optimizer: Any, counters: dict[str, Any]):
        self.model = model  # the GPTModel inside Megatron's DDP
        self.optimizer = optimizer
        self.counters = counters
        self.expect: dict[str, Any] | None = None

    def save(self, directory: Path) -> None:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        save_sharded(directory / SHARDS_DIR, self.model, self.optimizer)
        rank = dist.rank()
        save_torch(
            directory / f"rng.rank{rank}.pt",
            {"rng": rng_state(), "megatron_rng": get_cuda_rng_tracker().get_states()},
        )
        if rank == 0:
            save_torch(directory / COUNTERS_FILE, self.counters)
        dist.barrier()

    def load(self, directory: Path) -> None:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        counters = load_torch(directory / COUNTERS_FILE)
        if self.expect is not None:
            found = {k: counters.get(k) for k in self.expect}
            if found != self.expect:
                raise ValueError(
                    f"checkpoint {directory} was written for {found}, this job is {self.expect}: "
                    "remove the work dir's checkpoints to restart the phase with the new data"
                )
        load_sharded(directory / SHARDS_DIR, self.model, self.optimizer)
        self.counters = counters
        rng_file = directory / f"rng.rank{dist.rank()}.pt"
        if rng_file.is_file():  # absent when resuming at a larger data-parallel size
            payload = load_torch(rng_file)
            set_rng_state(payload["rng"])
            get_cuda_rng_tracker().set_states(payload["megatron_rng"])


def save_final_checkpoint(state: MegatronState, out: Path, is_main: bool) -> Path:
    """Collective: ``state`` into ``out``, written whole or not at all (with a COMPLETE marker).

    Rank 0 makes the temp directory (:func:`slingshot.io.atomic_dir`: on a full disk it
    raises the DiskFullError naming ``out`` and removes what was written); every rank writes
    its shards into it; rank 0 swaps it in.
    """
    if is_main:  # what a writer killed mid-save left (atomic_dir's temp names)
        for stale in out.parent.glob(f".{out.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(out) if is_main else nullcontext(None) as tmp:
        shared = Path(dist.broadcast_object(str(tmp) if tmp else None))
        state.save(shared)
        if is_main:
            atomic_write_text(shared / "COMPLETE", f"global_step {state.counters['global_step']}\n")
    dist.barrier()
    return out
