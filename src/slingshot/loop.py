"""The resumable step loop every training stage runs.

    for step in resumable_steps(ctx, total_steps, state):
        ...one optimizer step...

resumes from the newest complete checkpoint (``state.load_state_dict``), then after each
step asks the save triggers (interval, time budget, USR2), saves through the
checkpoint manager, and raises StageInterrupted after saving on a stop request.
State written by rank 0 alone uses the default; stages whose state every rank writes
(``slingshot.train.state.TrainState``'s DCP checkpoints: SFT, RLP, ProRL; Megatron
dist_checkpointing) pass ``all_ranks_write=True`` and write into the directory they are
given, the same for every rank, published only after every rank has written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from slingshot import dist
from slingshot.checkpoint import StageInterrupted
from slingshot.context import StageContext
from slingshot.train.logging import Progress


class Stateful(Protocol):
    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


def resume_step(ctx: StageContext, state: Stateful) -> int:
    """Load the newest complete checkpoint into ``state``; return its step (0 if none)."""
    latest = ctx.checkpoints.latest()
    if latest is None:
        return 0
    state.load(latest.path)
    ctx.tracker.set_tags({"slingshot.resumed_from_step": latest.step})
    print(f"[slingshot] {ctx.stage}: resumed from {latest.path}", flush=True)
    return latest.step


def save_checkpoint(ctx: StageContext, step: int, state: Stateful, all_ranks_write: bool = False) -> None:
    if not all_ranks_write:
        if ctx.dist.is_main:
            with ctx.checkpoints.saving(step) as directory:
                state.save(directory)
        dist.barrier()
        return
    # Sharded state: every rank writes into rank 0's temp dir; rank 0 publishes after a barrier.
    manager = ctx.checkpoints
    if ctx.dist.is_main:
        saving = manager.saving(step)
        directory = saving.__enter__()
    directory = Path(dist.broadcast_object(str(directory) if ctx.dist.is_main else None))
    try:
        state.save(directory)
        dist.barrier()
    except BaseException as error:
        if ctx.dist.is_main:
            saving.__exit__(type(error), error, error.__traceback__)
        raise
    if ctx.dist.is_main:
        saving.__exit__(None, None, None)
    dist.barrier()


def resumable_steps(
    ctx: StageContext, total_steps: int, state: Stateful, all_ranks_write: bool = False
) -> Iterator[int]:
    """Yield the steps still to run (1-based); checkpoint and stop as the triggers say, and
    keep ``ctx.progress`` (the step log's i/N and ETA, ``progress.json`` for status)."""
    start = resume_step(ctx, state)
    ctx.progress = Progress(ctx.work_dir, total_steps, start, write=ctx.dist.is_main)
    for step in range(start + 1, total_steps + 1):
        yield step
        ctx.progress.update(step)
        save, stop = ctx.triggers.check(step)
        if save or step == total_steps:
            save_checkpoint(ctx, step, state, all_ranks_write)
        if stop:
            raise StageInterrupted(step, ctx.triggers.stop_signal or "stop request")
