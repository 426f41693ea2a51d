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
            if rank == 0:
                assert grid is not None
                out = Path(out_root) / name
                export_to_hf(grid, cfg, out / "hf")
                torch.save(
                    {
                        "tokens": probe,
                        "logits": logits,
                        "init_logits": init_logits,
                        "losses": losses,
                        "grid": grid,
                        "shim_idempotent": bool(shim_idempotent),
                    },
                    out / "mcore.pt",
                )
    finally:
        destroy_model_parallel()
