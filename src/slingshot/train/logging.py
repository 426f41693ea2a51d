"""Step metrics and progress, for every training loop in one place.

- :class:`Progress`: where the loop stands (step i of N, rate, ETA), kept by
  :func:`slingshot.loop.resumable_steps` and written to ``<work_dir>/progress.json`` (rank 0,
  at most every couple of seconds, atomically), where ``slingshot status`` reads it.
- :class:`StepLogger`: metrics to MLflow (by explicit step, rank 0) and a readable line in
  the job log: ``[stage] step i/N (p%) loss=... (1.2s) ETA 0:04:10``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slingshot.context import StageContext
from slingshot.io import atomic_write_json

PROGRESS_FILE = "progress.json"
WRITE_EVERY_S = 2.0


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Step ``step`` of ``total``; the ETA is the rate of this job's steps so far (a resumed
    job counts from the step it resumed at, not from 0)."""

    def __init__(self, work_dir: Path, total: int, start_step: int, write: bool = True):
        self.path = Path(work_dir) / PROGRESS_FILE
        self.total = total
        self.start_step = start_step
        self.step = start_step
        self.started = time.monotonic()
        self.started_at = time.time()
        self._write_enabled = write
        self._written = 0.0
        self.save(force=True)

    def eta_s(self, step: int | None = None) -> float | None:
        step = self.step if step is None else step
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * max(self.total - step, 0)

    def percent(self, step: int | None = None) -> float:
        step = self.step if step is None else step
        return 100.0 * step / self.total if self.total else 100.0

    def update(self, step: int) -> None:
        self.step = step
        self.save(force=step >= self.total)

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._write_enabled or (not force and now - self._written < WRITE_EVERY_S):
            return
        self._written = now
        eta = self.eta_s()
        atomic_write_json(
            self.path,
            {
                "step": self.step,
                "total": self.total,
                "start_step": self.start_step,
                "started_at": self.started_at,
                "updated_at": time.time(),
                "eta_s": eta,
            },
        )


def read_progress(work_dir: Path) -> dict[str, Any] | None:
    path = Path(work_dir) / PROGRESS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
            progress = self.ctx.progress
            where = f"step {step}"
            eta = ""
            if progress is not None:
                where += f"/{progress.total} ({progress.percent(step):.0f}%)"
                eta = f" ETA {format_duration(progress.eta_s(step))}"
            print(f"[{self.ctx.stage}] {where} {shown} ({now - self._last:.1f}s){eta}", flush=True)
            self._last = now
