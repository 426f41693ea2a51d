"""Spawned worker: trains tiny Megatron GPTs for a few steps (the pretrain stage's training
step) and exports them to HF.

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


def _micro_batch(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """A [batch, seq + 1] token block as the training step's micro-batch (every token counts)."""
    return {"tokens": batch[:, :-1], "labels": batch[:, 1:], "loss_mask": torch.ones(batch[:, 1:].shape)}


def _wrap(model: Any, case: dict[str, Any]) -> tuple[Any, Any]:
    from slingshot.config import OptimizerConfig
    from slingshot.models.config import ParallelConfig
    from slingshot.models.megatron_train import wrap_for_training

    return wrap_for_training(
        model,
        OptimizerConfig(lr=case.get("lr", 3e-3)),
        ParallelConfig(use_distributed_optimizer=case.get("dist_opt", False)),
    )


def _step(ddp: Any, optimizer: Any, batch: torch.Tensor, case: dict[str, Any]) -> tuple[float, float]:
    from slingshot.models.megatron_train import train_step

    return train_step(ddp, optimizer, [_micro_batch(batch)], case.get("lr", 3e-3))


def _checkpoint_roundtrip(
    cfg: Any,
    case: dict[str, Any],
    ddp: Any,
    optimizer: Any,
    batch: torch.Tensor,
    probe: torch.Tensor,
    ckpt: Path,
) -> dict[str, Any]:
    """Sharded save -> fresh model/optimizer -> load: same logits, same next step."""
    from slingshot.models.megatron_checkpoint import load_sharded, save_sharded
    from slingshot.models.megatron_gpt import build_gpt, full_logits

    save_sharded(ckpt, ddp.module, optimizer)
    logits = full_logits(ddp, probe, cfg.vocab_size)
    next_loss = _step(ddp, optimizer, batch, case)

    model2 = build_gpt(cfg)
    ddp2, opt2 = _wrap(model2, case)
    load_sharded(ckpt, model2, opt2)
    return {
        "reload_logits_equal": torch.equal(full_logits(ddp2, probe, cfg.vocab_size), logits),
        "resumed_step": (next_loss, _step(ddp2, opt2, batch, case)),
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

    init_model_parallel(tp=world_size, pp=1, backend="gloo", rank=rank, world_size=world_size)
    shim_idempotent = cpu_shim.apply() and cpu_shim.apply() and cpu_shim.is_applied()
    try:
        for name, case in cases.items():
            cfg = GPTModelConfig(**case["model"])
            torch.manual_seed(case.get("seed", 0))  # CPU init: same full weights on every TP rank
            model = build_gpt(cfg)
            ddp, optimizer = _wrap(model, case)
            data = torch.randint(
                0, cfg.vocab_size, (STEPS, BATCH, SEQ + 1), generator=torch.Generator().manual_seed(7)
            )  # identical on all TP ranks, as Megatron requires
            probe = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(11))
            init_logits = full_logits(ddp, probe, cfg.vocab_size)
            losses = [_step(ddp, optimizer, batch, case)[0] for batch in data]
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
