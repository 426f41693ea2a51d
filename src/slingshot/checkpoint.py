"""Checkpoints that are never half-written, and the triggers that decide when to save.

Layout under a stage's work dir::

    checkpoints/
      step-00000120/      a complete checkpoint (has COMPLETE, written last)
      step-00000180/
      .tmp-step-00000240-x1y2/   being written; ignored, removed on the next save
      latest              text file naming the newest complete checkpoint

A checkpoint is written into a temp directory, every file fsynced, then COMPLETE is
written and the directory renamed into place, then ``latest`` is replaced
atomically. Discovery trusts only directories with COMPLETE, so a job killed while
saving leaves the previous checkpoint in charge. A save that fails (a full disk: a
CheckpointWriteError naming the directory and the free space) removes its temp directory
and leaves the previous checkpoints as they were.

Test hook (fault-injection tests only; unset in real runs): with
``SLINGSHOT_TEST_HOLD_SAVE=<step>`` the save of that step, once the stage has written its
files and before COMPLETE, writes ``checkpoints/.held-step-<step>`` (naming the temp
directory) and waits there (up to SLINGSHOT_TEST_HOLD_SAVE_S seconds, default 600, or
until ``checkpoints/.release-step-<step>`` appears), so a test can kill the job in the
middle of a save. It holds once per work dir: the marker stays, so the resumed job saves
that step without waiting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slingshot import dist
from slingshot.io import atomic_write_text, disk_full, fsync_dir

COMPLETE = "COMPLETE"
_NOT_ERRORS = (KeyboardInterrupt, SystemExit, GeneratorExit)
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (its temp directory is removed; older ones are intact)."""


class StageInterrupted(Exception):
    """Raised by a stage loop after it saved a checkpoint because a stop was requested
    (USR2 before a time limit or a preemption). The launcher's job wrapper requeues."""

    def __init__(self, step: int, signal_name: str):
        self.step = step
        self.signal_name = signal_name
        super().__init__(f"stopped at step {step} after {signal_name}; checkpoint saved")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / COMPLETE).read_text())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(dirpath)


class CheckpointManager:
    def __init__(self, root: str | os.PathLike[str], keep: int = 2):
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)

    def complete(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        found = []
        for entry in self.root.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / COMPLETE).is_file():
                found.append(Checkpoint(int(match.group(1)), entry))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint (the ``latest`` pointer is a hint; COMPLETE is the truth)."""
        found = self.complete()
        return found[-1] if found else None

    @contextmanager
    def saving(self, step: int, meta: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a directory to write checkpoint ``step`` into; publish it only if the block succeeds."""
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=self.root))
        try:
            yield tmp
            self._test_hold(step, tmp)
            _fsync_tree(tmp)
            record = {"step": step, "time": time.time(), **(meta or {})}
            atomic_write_text(tmp / COMPLETE, json.dumps(record, sort_keys=True, default=str))
            final = self.root / f"step-{step:08d}"
            if final.exists():  # the same step saved again after a resume: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.root)
            atomic_write_text(self.root / "latest", final.name + "\n")
        except BaseException as error:
            # Not isinstance(error, Exception): torch.distributed.checkpoint's CheckpointException
            # (Megatron's sharded saves) derives from BaseException.
            full = None if isinstance(error, _NOT_ERRORS) else disk_full(error, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            if full is not None:
                latest = self.latest()
                raise CheckpointWriteError(
                    full.errno,
                    f"no space left on device while writing checkpoint step {step} into {self.root} "
                    f"({full.space}); the partial checkpoint was removed and "
                    f"the last complete checkpoint ({latest.path if latest else 'none'}) is intact: "
                    "free space there, then rerun to resume from it",
                ) from error
            raise
        self._prune()

    def _test_hold(self, step: int, tmp: Path) -> None:
        """The fault-injection hook described in the module docstring (a no-op unless set)."""
        wanted = os.environ.get("SLINGSHOT_TEST_HOLD_SAVE")
        if not wanted or int(wanted) != step:
            return
        marker = self.root / f".held-step-{step}"
        if marker.exists():
            return
        marker.write_text(f"{tmp.resolve()}\n{os.getpid()}\n")
        release = self.root / f".release-step-{step}"
        deadline = time.monotonic() + float(os.environ.get("SLINGSHOT_TEST_HOLD_SAVE_S", "600"))
        while time.monotonic() < deadline and not release.exists():
            time.sleep(0.1)

    def _prune(self) -> None:
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old.path, ignore_errors=True)


def save_torch(path: Path, obj: Any) -> None:
    """torch.save into a checkpoint directory being written (the directory rename is the commit)."""
    torch.save(obj, path)


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class SaveTriggers:
    """Decides at a step boundary whether to save: every N steps, once the time budget
    is spent, or when a stop signal arrived. All ranks decide together."""

    interval_steps: int
    time_budget_s: float | None = None
    started_at: float = field(default_factory=time.monotonic)
    stop_signal: str | None = None
    _budget_saved: bool = False

    def request_stop(self, signal_name: str) -> None:
        self.stop_signal = signal_name

    def install_signal_handler(self, signum: int = signal.SIGUSR2) -> None:
        """Turn ``signum`` into a stop request handled at the next step boundary (never mid-step)."""

        def handler(received: int, frame: Any) -> None:
            self.request_stop(signal.Signals(received).name)

        signal.signal(signum, handler)

    def check(self, step: int) -> tuple[bool, bool]:
        """(save now, stop after saving) for the step just completed."""
        stop = dist.any_rank(self.stop_signal is not None)
        budget = (
            self.time_budget_s is not None
            and not self._budget_saved
            and time.monotonic() - self.started_at >= self.time_budget_s
        )
        budget = dist.any_rank(budget)
        if budget:
            self._budget_saved = True
        return (stop or budget or step % self.interval_steps == 0), stop


def time_budget_seconds(time_limit_min: float, explicit_budget_min: float | None) -> float:
    """Seconds after which to save before the job's time limit: explicit, or the limit minus
    a margin (10% of the limit, at least 2 and at most 15 minutes)."""
    if explicit_budget_min is not None:
        return explicit_budget_min * 60
    limit = time_limit_min * 60
    margin = min(max(0.1 * limit, 120.0), 900.0)
    return max(limit - margin, 0.5 * limit)


StateWriter = Callable[[Path], None]
