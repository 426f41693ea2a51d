"""Sharded Megatron-Core checkpoints (dist_checkpointing) of a GPT model and its optimizer.

Every rank calls ``save_sharded``/``load_sharded`` with the same directory; each writes
or reads its own shards (TP/PP/distributed-optimizer aware), so a checkpoint can be
resumed at any data-parallel size ("dp_reshardable"). Found on megatron-core 0.16.1
(CPU): the distributed optimizer's state must exist before loading (its
``_init_optimizer_states_with_dummy_values``), and loading copies into leaf main
params, so it runs under ``torch.no_grad()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

_META = {"distrib_optim_sharding_type": "dp_reshardable"}


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_sharded(directory: str | Path, model: Any, optimizer: Any) -> None:
    """Collective: write model + optimizer shards into ``directory`` (created by rank 0)."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if not dist.is_initialized() or dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    _barrier()
    model_sd = model.sharded_state_dict()
    dist_checkpointing.save(
        {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, metadata=_META)},
        str(directory),
    )
    _barrier()


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
