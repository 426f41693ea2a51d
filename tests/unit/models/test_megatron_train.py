"""The pretrain stage's training step and data-parallel mean, in two spawned gloo processes
(data-parallel size 2): what the step returns, that gradient accumulation does not change
the update, and that the loss mask decides which tokens count."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("megatron.core")

from .mcore_worker import train_step_checks  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("train_step")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(train_step_checks, args=(2, port, str(out)), nprocs=2, start_method="spawn", join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_data_parallel_mean_averages_over_the_ranks(ranks: list[dict[str, Any]]) -> None:
    assert [r["mean"] for r in ranks] == [1.5, 1.5]  # ranks passed 1.0 and 2.0
    for r in ranks:
        one = r["runs"]["one"]
        assert one["lr"] == 1e-2  # the step sets the lr it is given
    losses = [r["runs"]["one"]["loss"] for r in ranks]
    assert losses[0] != losses[1]  # each rank trains on its own rows...
    assert ranks[0]["runs"]["one"]["dp_loss"] == pytest.approx(sum(losses) / 2, rel=1e-12)


def test_gradient_accumulation_takes_the_same_step(ranks: list[dict[str, Any]]) -> None:
    """4 rows in one micro-batch or in two of 2: the same loss, grad norm and weights after."""
    for r in ranks:
        one, two = r["runs"]["one"], r["runs"]["two"]
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
        # Adam's first step moves each weight by about lr = 1e-2 in the direction of its
        # gradient; rounding in the summed gradients shows only far below that.
        for a, b in zip(one["params"], two["params"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    # ...and Megatron's DDP averaged the gradients: both ranks hold the same weights.
    for a, b in zip(ranks[0]["runs"]["one"]["params"], ranks[1]["runs"]["one"]["params"], strict=True):
        assert torch.equal(a, b)


def test_masked_tokens_carry_no_loss(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert r["masked"] == (0.0, 0.0)  # no supervised token: zero loss, zero gradient
