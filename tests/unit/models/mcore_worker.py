"""Spawned worker: trains tiny Megatron GPTs for a few steps and exports them to HF.

Runs in fresh processes (start_method="spawn") so that torch.distributed, Megatron's
global parallel state and the CPU shim never leak into the pytest process.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

SEQ = 32
BATCH = 4
STEPS = 3


def _checkpoint_roundtrip(
    cfg: Any,
    case: dict[str, Any],
    ddp: Any,
    optimizer: Any,
    batch: torch.Tensor,
    probe: torch.Tensor,
    ckpt: Path,
) -> dict[str, Any]:
    """dist_checkpointing save -> fresh model/optimizer -> load: same logits, same next step."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from slingshot.models.megatron_gpt import build_gpt, full_logits
    from slingshot.models.megatron_train import train_step, wrap_for_training

    meta = {"distrib_optim_sharding_type": "dp_reshardable"}
    if dist.get_rank() == 0:
        ckpt.mkdir(parents=True)
    dist.barrier()
    model_sd = ddp.module.sharded_state_dict()
    dist_checkpointing.save(
        {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, metadata=meta)}, str(ckpt)
    )
    logits = full_logits(ddp, probe, cfg.vocab_size)
    next_loss = train_step(ddp, optimizer, batch[:, :-1], batch[:, 1:])

    model2 = build_gpt(cfg)
    ddp2, opt2 = wrap_for_training(
        model2, lr=case.get("lr", 3e-3), use_distributed_optimizer=case.get("dist_opt", False)
    )
    for opt in getattr(opt2, "chained_optimizers", [opt2]):
        if hasattr(opt, "_init_optimizer_states_with_dummy_values"):
            opt._init_optimizer_states_with_dummy_values()  # load fills existing state in place
    sd2 = model2.sharded_state_dict()
    loaded = dist_checkpointing.load(
        {"model": sd2, "optimizer": opt2.sharded_state_dict(sd2, is_loading=True, metadata=meta)}, str(ckpt)
    )
    model2.load_state_dict(loaded["model"])
    with torch.no_grad():  # the optimizer copies into leaf main params
        opt2.load_state_dict(loaded["optimizer"])
    return {
        "reload_logits_equal": torch.equal(full_logits(ddp2, probe, cfg.vocab_size), logits),
        "resumed_step": (next_loss, train_step(ddp2, opt2, batch[:, :-1], batch[:, 1:])),
    }


def run_cases(rank: int, world_size: int, port: int, cases: dict[str, dict[str, Any]], out_root: str) -> None:
    """For each case: build, train STEPS AdamW steps, record logits, gather shards, export (rank 0)."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    from slingshot.models import cpu_shim
    from slingshot.models.config import GPTModelConfig
    from slingshot.models.export import export_to_hf, gather_state_dicts_for_export
    from slingshot.models.megatron_gpt import (
        build_gpt,
        destroy_model_parallel,
        full_logits,
        init_model_parallel,
    )
    from slingshot.models.megatron_train import train_step, wrap_for_training

    init_model_parallel(tp=world_size, pp=1, backend="gloo", rank=rank, world_size=world_size)
    shim_idempotent = cpu_shim.apply() and cpu_shim.apply() and cpu_shim.is_applied()
    try:
        for name, case in cases.items():
            cfg = GPTModelConfig(**case["model"])
            torch.manual_seed(case.get("seed", 0))  # CPU init: same full weights on every TP rank
            model = build_gpt(cfg)
            ddp, optimizer = wrap_for_training(
                model, lr=case.get("lr", 3e-3), use_distributed_optimizer=case.get("dist_opt", False)
            )
            data = torch.randint(
                0, cfg.vocab_size, (STEPS, BATCH, SEQ + 1), generator=torch.Generator().manual_seed(7)
            )  # identical on all TP ranks, as Megatron requires
            probe = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(11))
            init_logits = full_logits(ddp, probe, cfg.vocab_size)
            losses = [train_step(ddp, optimizer, batch[:, :-1], batch[:, 1:])[0] for batch in data]
            logits = full_logits(ddp, probe, cfg.vocab_size)
            grid = gather_state_dicts_for_export(model)
            ckpt = (
                _checkpoint_roundtrip(
                    cfg, case, ddp, optimizer, data[0], probe, Path(out_root) / name / "ckpt"
                )
                if case.get("checkpoint")
                else None
            )
            if rank == 0:
                assert grid is not None
                out = Path(out_root) / name
                out.mkdir(parents=True, exist_ok=True)
                export_to_hf(grid, cfg, out / "hf")
                torch.save(
                    {
                        "tokens": probe,
                        "logits": logits,
                        "init_logits": init_logits,
                        "losses": losses,
                        "grid": grid,
                        "shim_idempotent": bool(shim_idempotent),
                        "checkpoint": ckpt,
                    },
                    out / "mcore.pt",
                )
    finally:
        destroy_model_parallel()
