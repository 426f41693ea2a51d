"""Step metrics: to MLflow (by explicit step, rank 0) and a readable line in the job log."""

from __future__ import annotations

import time
from collections.abc import Mapping

from slingshot.context import StageContext


class StepLogger:
    def __init__(self, ctx: StageContext, every: int):
        self.ctx = ctx
        self.every = every
        self._last = time.monotonic()

    def log(self, step: int, metrics: Mapping[str, float], force: bool = False) -> None:
        if not (force or step % self.every == 0):
            return
        self.ctx.tracker.log_metrics(metrics, step=step)
        if self.ctx.dist.is_main:
            now = time.monotonic()
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
            print(f"[{self.ctx.stage}] step {step} {shown} ({now - self._last:.1f}s)", flush=True)
            self._last = now
