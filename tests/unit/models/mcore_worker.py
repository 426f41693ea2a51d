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


def train_step(*args: Any) -> tuple[float, float]:
    """The pretrain stage's training step (imported late: Megatron loads only in the workers)."""
    from slingshot.models.megatron_train import train_step as production_step

    return production_step(*args)


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


def train_step_checks(rank: int, world_size: int, port: int, out_root: str) -> None:
    """Rank ``rank`` of a data-parallel job (TP=1): the data-parallel mean, gradient
    accumulation (one micro-batch of 4 rows == two of 2) and the loss mask, with the
    production training step. Each rank writes ``<out_root>/rank<r>.pt``."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    from slingshot.models.config import GPTModelConfig
    from slingshot.models.megatron_gpt import build_gpt, destroy_model_parallel, init_model_parallel
    from slingshot.models.megatron_train import data_parallel_mean

    init_model_parallel(1, 1, backend="gloo", rank=rank, world_size=world_size)
    try:
        cfg = GPTModelConfig(
            num_layers=1,
            hidden_size=32,
            ffn_hidden_size=64,
            num_attention_heads=2,
            vocab_size=64,
            seq_length=SEQ,
        )
        case = {"lr": 1e-2}
        data = torch.randint(
            0, cfg.vocab_size, (world_size * 4, SEQ + 1), generator=torch.Generator().manual_seed(3)
        )
        mine = data[rank * 4 : (rank + 1) * 4]  # this DP rank's share of the global batch
        runs = {}
        for name, micro in (("one", [mine]), ("two", [mine[:2], mine[2:]])):
            torch.manual_seed(0)
            ddp, optimizer = _wrap(build_gpt(cfg), case)
            loss, grad_norm = train_step(ddp, optimizer, [_micro_batch(m) for m in micro], case["lr"])
            runs[name] = {
                "loss": loss,
                "dp_loss": data_parallel_mean(loss),
                "grad_norm": grad_norm,
                "lr": optimizer.param_groups[0]["lr"],
                "params": [p.detach().clone() for p in ddp.module.parameters()],
            }
        masked = _micro_batch(mine)
        masked["loss_mask"] = torch.zeros_like(masked["loss_mask"])
        torch.manual_seed(0)
        ddp, optimizer = _wrap(build_gpt(cfg), case)
        nothing = train_step(ddp, optimizer, [masked], 0.5)
        torch.save(
            {"mean": data_parallel_mean(float(rank + 1)), "runs": runs, "masked": nothing},
            Path(out_root) / f"rank{rank}.pt",
        )
    finally:
        destroy_model_parallel()


def import_cases(rank: int, world_size: int, port: int, cases: dict[str, str], out_root: str) -> None:
    """For each case (name -> HF directory): import into a TP=world_size GPT, record its
    logits on a fixed probe, and export it back to HF (rank 0) under ``<out_root>/<name>``."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    from transformers import AutoConfig

    from slingshot.models.export import export_to_hf, gather_state_dicts_for_export
    from slingshot.models.hf_import import gpt_config_from_hf, load_hf_into_gpt, read_hf_state_dict
    from slingshot.models.megatron_gpt import (
        build_gpt,
        destroy_model_parallel,
        full_logits,
        init_model_parallel,
    )

    init_model_parallel(tp=world_size, pp=1, backend="gloo", rank=rank, world_size=world_size)
    try:
        for name, hf_dir in cases.items():
            cfg = gpt_config_from_hf(AutoConfig.from_pretrained(hf_dir), SEQ, make_vocab_size_divisible_by=64)
            torch.manual_seed(123)  # a different init than the HF model's: the load must overwrite all
            model = build_gpt(cfg)
            load_hf_into_gpt(model, read_hf_state_dict(hf_dir), cfg)
            probe = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(11))
            logits = full_logits(model, probe, cfg.vocab_size)
            grid = gather_state_dicts_for_export(model)
            if rank == 0:
                assert grid is not None
                out = Path(out_root) / name
                export_to_hf(grid, cfg, out / "hf")
                shapes = {k: tuple(v.shape) for k, v in grid[0][world_size - 1].items()}
                torch.save({"tokens": probe, "logits": logits, "shard_shapes": shapes}, out / "mcore.pt")
    finally:
        destroy_model_parallel()
