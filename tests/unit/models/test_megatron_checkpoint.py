"""The phase's final Megatron checkpoint is published whole or not at all (one process; the
sharded save itself runs in the pretrain stage tests and tests/unit/models/mcore_worker.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from slingshot.models.megatron_checkpoint import save_final_checkpoint


class FakeState:
    """What save_final_checkpoint needs of a MegatronState: ``save(dir)`` and the step."""

    def __init__(self, step: int, fail: bool = False):
        self.counters: dict[str, Any] = {"global_step": step}
        self.fail = fail

    def save(self, directory: Path) -> None:
        (directory / "mcore").mkdir()
        (directory / "mcore" / "shard").write_text(f"weights at {self.counters['global_step']}")
        if self.fail:
            raise RuntimeError("a rank's shard write failed")


def test_final_checkpoint_replaces_the_old_one_whole(tmp_path: Path) -> None:
    out = tmp_path / "mcore"
    stale = tmp_path / ".mcore.abc123"  # what a job killed mid-save left
    stale.mkdir()
    (stale / "half").write_text("x")
    assert save_final_checkpoint(FakeState(6), out, is_main=True) == out
    assert (out / "COMPLETE").read_text() == "global_step 6\n"
    assert (out / "mcore" / "shard").read_text() == "weights at 6"
    save_final_checkpoint(FakeState(10), out, is_main=True)
    assert (out / "COMPLETE").read_text() == "global_step 10\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mcore"]  # no temp directory left


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "mcore"
    save_final_checkpoint(FakeState(6), out, is_main=True)
    with pytest.raises(RuntimeError, match="shard write failed"):
        save_final_checkpoint(FakeState(10, fail=True), out, is_main=True)
    assert (out / "COMPLETE").read_text() == "global_step 6\n"
    assert (out / "mcore" / "shard").read_text() == "weights at 6"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mcore"]
