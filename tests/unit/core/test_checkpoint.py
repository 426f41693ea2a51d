import os
import signal
import time

import pytest
import torch

from slingshot.checkpoint import COMPLETE, CheckpointManager, SaveTriggers, time_budget_seconds


def test_save_publishes_complete_checkpoints_and_prunes(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (2, 4, 6):
        with manager.saving(step, meta={"loss": step / 10}) as d:
            torch.save({"step": step}, d / "state.pt")
    assert [c.step for c in manager.complete()] == [4, 6]
    latest = manager.latest()
    assert latest.step == 6 and latest.meta()["loss"] == 0.6
    assert (tmp_path / "latest").read_text().strip() == "step-00000006"
    assert torch.load(latest.path / "state.pt")["step"] == 6


def test_a_failed_save_leaves_the_previous_checkpoint_in_charge(tmp_path):
    manager = CheckpointManager(tmp_path)
    with manager.saving(1) as d:
        (d / "a").write_text("ok")
    with pytest.raises(RuntimeError), manager.saving(2) as d:
        (d / "a").write_text("half")
        raise RuntimeError("killed mid-write")
    assert manager.latest().step == 1
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_a_directory_without_complete_marker_is_never_picked(tmp_path):
    manager = CheckpointManager(tmp_path)
    with manager.saving(3) as d:
        (d / "a").write_text("ok")
    # What a job killed between writing files and the marker would leave behind.
    partial = tmp_path / "step-00000009"
    partial.mkdir()
    (partial / "a").write_text("partial")
    (tmp_path / ".tmp-step-00000010-xyz").mkdir()
    assert manager.latest().step == 3
    assert (manager.latest().path / COMPLETE).is_file()


def test_triggers_interval_budget_and_signal():
    triggers = SaveTriggers(interval_steps=3, time_budget_s=None)
    assert [triggers.check(s)[0] for s in range(1, 7)] == [False, False, True, False, False, True]
    budget = SaveTriggers(interval_steps=100, time_budget_s=0.0)
    assert budget.check(1) == (True, False)
    assert budget.check(2) == (False, False)  # the budget save happens once
    sig = SaveTriggers(interval_steps=100)
    sig.install_signal_handler(signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.05)
    assert sig.check(5) == (True, True) and sig.stop_signal == "SIGUSR2"
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_time_budget_leaves_a_margin_before_the_limit():
    assert time_budget_seconds(60, None) == 60 * 60 - 360  # 10% of an hour
    assert time_budget_seconds(10, None) == 600 - 120  # at least two minutes
    assert time_budget_seconds(1000, None) == 1000 * 60 - 900  # at most fifteen
    assert time_budget_seconds(60, 5) == 300


def test_a_save_on_a_full_disk_names_the_directory_and_keeps_the_last_checkpoint(tmp_path):
    import errno

    from slingshot.checkpoint import CheckpointWriteError

    manager = CheckpointManager(tmp_path / "ckpt")
    with manager.saving(1) as directory:
        (directory / "state.pt").write_bytes(b"one")

    with pytest.raises(CheckpointWriteError) as err, manager.saving(2) as directory:
        (directory / "state.pt").write_bytes(b"tw")
        raise OSError(errno.ENOSPC, "No space left on device")
    text = str(err.value)
    assert f"no space left on device while writing checkpoint step 2 into {tmp_path / 'ckpt'}" in text
    assert f"the last complete checkpoint ({tmp_path / 'ckpt' / 'step-00000001'}) is intact" in text
    assert [c.step for c in manager.complete()] == [1]
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))


def test_a_writer_error_without_errno_on_a_full_filesystem_counts_as_disk_full(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from slingshot.checkpoint import CheckpointWriteError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(4096, 4096, 0))
    manager = CheckpointManager(tmp_path / "ckpt")
    with pytest.raises(CheckpointWriteError, match="0 of 4096 bytes free"), manager.saving(1):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.undo()
    # With room left, an error stays itself.
    with pytest.raises(RuntimeError, match="unrelated"), manager.saving(1):
        raise RuntimeError("unrelated")


def test_the_hold_hook_pauses_one_save_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SLINGSHOT_TEST_HOLD_SAVE", "2")
    monkeypatch.setenv("SLINGSHOT_TEST_HOLD_SAVE_S", "0.2")
    manager = CheckpointManager(tmp_path / "ckpt")
    with manager.saving(2) as directory:
        (directory / "a").write_text("x")
    held, pid = (tmp_path / "ckpt" / ".held-step-2").read_text().split()
    assert held.startswith(str(tmp_path / "ckpt" / ".tmp-step-00000002-")) and int(pid) > 0
    assert [c.step for c in manager.complete()] == [2]
