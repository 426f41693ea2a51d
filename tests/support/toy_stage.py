"""A small real training stage for testing the pipeline machinery before (and beside) the
real stages: a tiny torch regression model, real optimizer steps, real checkpoints
through slingshot's loop, metrics to MLflow, a model directory and a manifest.

Knobs (environment, so they reach Slurm jobs): TOY_STEPS (default 6), TOY_STEP_SECONDS
(sleep per step, default 0), TOY_FAIL_AT (raise at that step), TOY_FAIL_KIND (only in
stages of that kind; default every kind).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

from slingshot.checkpoint import load_torch, save_torch
from slingshot.context import StageContext, StageResult
from slingshot.io import atomic_write_json, sha256_file


class ToyState:
    def __init__(self, seed: int, world_size: int):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.05)
        self.generator = torch.Generator().manual_seed(seed)
        self.world_size = world_size

    def save(self, directory: Path) -> None:
        save_torch(
            directory / "state.pt",
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(),
            },
        )

    def load(self, directory: Path) -> None:
        state = load_torch(directory / "state.pt")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def run(ctx: StageContext) -> StageResult:
    from slingshot.loop import resumable_steps

    steps = int(os.environ.get("TOY_STEPS", "6"))
    step_seconds = float(os.environ.get("TOY_STEP_SECONDS", "0"))
    fail_at = int(os.environ.get("TOY_FAIL_AT", "0"))
    if os.environ.get("TOY_FAIL_KIND", ctx.kind) != ctx.kind:
        fail_at = 0
    state = ToyState(ctx.pipeline.pipeline.seed, ctx.dist.world_size)
    true_w = torch.linspace(-1, 1, 8)
    events = ctx.work_dir / f"events.rank{ctx.dist.rank}.jsonl"
    loss = torch.tensor(0.0)
    for step in resumable_steps(ctx, steps, state):
        # The same global batch whatever the world size: each rank takes its slice.
        x = torch.randn(16, 8, generator=state.generator)
        x = x.chunk(ctx.dist.world_size)[ctx.dist.rank]
        y = (x @ true_w).unsqueeze(1)
        loss = torch.nn.functional.mse_loss(state.model(x), y)
        state.optimizer.zero_grad()
        loss.backward()
        if ctx.dist.world_size > 1:
            for p in state.model.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= ctx.dist.world_size
        state.optimizer.step()
        with open(events, "a") as handle:
            handle.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": loss.item(),
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "probe": os.environ.get("SLINGSHOT_PROBE"),
                        "python": sys.executable,
                        "slurm_node": os.environ.get("SLURMD_NODENAME"),
                        "job": os.environ.get("SLURM_JOB_ID"),
                        "restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
                        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    }
                )
                + "\n"
            )
        ctx.tracker.log_metrics({"loss": loss.item()}, step=step)
        if fail_at and step == fail_at:
            raise RuntimeError(f"toy stage failing on purpose at step {step}")
        time.sleep(step_seconds)
    model_dir = ctx.output_dir / "model"
    if ctx.dist.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
        weights = model_dir / "model.pt"
        torch.save(state.model.state_dict(), weights)
        atomic_write_json(model_dir / "config.json", {"model_type": "toy"})
        ctx.tracker.log_input("toy-regression", ctx.work_dir, digest=sha256_file(weights), context="training")
        ctx.tracker.log_model_dir("toy", model_dir, params={"steps": steps})
    return StageResult(
        outputs={"model_dir": str(model_dir)},
        metrics={"loss": loss.item()},
        tokens=steps * 16,
        extra={"world_size": ctx.dist.world_size},
    )
