"""The Megatron-Core pretraining stage on the small data recipe, in spawned processes.

- Two phases: phase 2 starts from phase 1's final Megatron checkpoint with the new
  blend; consumed-token counts continue; the lr schedule spans both phases; the HF
  export loads and its loss on a batch equals the Megatron checkpoint's loss.
- Stop after k steps (as USR2 would) and resume in a fresh process, in both phases:
  every step's loss equals the uninterrupted run's.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("megatron.core")

from pretrain_worker import run_jobs  # noqa: E402
from stages import TINY_GPT  # noqa: E402

# 2 layers, seq 64, 8 sequences per step: phase1 = 6 steps, phase2 = 4 steps.
PRETRAIN = {
    "model": TINY_GPT,
    "total_tokens": 5120,
    "micro_batch_size": 4,
    "global_batch_size": 8,
    "log_every": 1,
    "checkpoint": {"interval_steps": 2},
    "optimizer": {"lr": 0.003, "warmup_steps": 2},
}
OVERRIDES = {"stages": {"pretrain": PRETRAIN}}
P1, P2 = "main/pretrain-phase1", "main/pretrain-phase2"


def _spawn(
    root: Path,
    data: dict[str, Any],
    jobs: list[dict[str, Any]],
    overrides: dict[str, Any] = OVERRIDES,
    nprocs: int = 1,
) -> None:
    port = 0
    if nprocs > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    mp.start_processes(
        run_jobs,
        args=(str(root), overrides, data, jobs, nprocs, port),
        nprocs=nprocs,
        start_method="spawn",
        join=True,
    )


def _read(root: Path, name: str) -> dict[str, Any]:
    return json.loads((root / f"{name}.json").read_text())


def _losses(*records: dict[str, Any]) -> dict[int, float]:
    out: dict[int, float] = {}
    for record in records:
        out.update({int(step): m["loss"] for step, m in record["metrics"].items()})
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, small_data: dict[str, Any]) -> Path:
    """Phase 1 then phase 2, uninterrupted, in one fresh process."""
    root = tmp_path_factory.mktemp("clean")
    _spawn(
        root,
        small_data,
        [
            {"name": "p1", "dir": "run", "phase": "phase1"},
            {
                "name": "p2",
                "dir": "run",
                "phase": "phase2",
                "upstream": {P1: str(root / "p1.json")},
                "model_from": P1,
                "probe": True,
            },
        ],
    )
    return root


@pytest.mark.slow
def test_two_phases_continue_from_the_megatron_checkpoint(clean: Path, small_data: dict[str, Any]) -> None:
    p1, p2 = _read(clean, "p1"), _read(clean, "p2")
    m1, m2 = p1["manifest"], p2["manifest"]
    # Global steps continue: phase 2 logs steps 7..10 after phase 1's 1..6.
    assert sorted(int(s) for s in p1["metrics"]) == list(range(1, 7))
    assert sorted(int(s) for s in p2["metrics"]) == list(range(7, 11))
    assert m1["pretrain"]["global_step"] == 6 and m2["pretrain"]["global_step"] == 10
    # The lr schedule spans both phases: warmup, then cosine to 10% of the peak at the end.
    lr = {int(s): m["lr"] for s, m in {**p1["metrics"], **p2["metrics"]}.items()}
    assert lr[1] == pytest.approx(0.0015) and lr[2] == pytest.approx(0.003)
    assert all(lr[s + 1] < lr[s] for s in range(3, 10))
    assert lr[10] > 0.0003 and lr[10] == pytest.approx(
        0.0003 + 0.0027 * 0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item())
    )
    # Consumption per corpus continues across the phases; reasoning data only in phase 2.
    c1, c2 = m1["pretrain"]["consumed_tokens"], m2["pretrain"]["consumed_tokens"]
    assert c1 == {"general": 6 * 8 * 64, "reasoning": 0}
    assert c2["general"] >= c1["general"] and c2["reasoning"] > 0
    assert c2["general"] + c2["reasoning"] == 10 * 8 * 64
    # Phase 2's corpus streams continue where phase 1 stopped.
    assert m2["pretrain"]["phase_start_samples"] == m1["pretrain"]["consumed_samples"]
    phase2 = {
        n: s - m1["pretrain"]["consumed_samples"][n] for n, s in m2["pretrain"]["consumed_samples"].items()
    }
    assert phase2["reasoning"] / sum(phase2.values()) == pytest.approx(0.2, abs=0.05)  # the blend's weight
    assert p1["inputs"] == ["corpus-general"] and p2["inputs"] == ["corpus-general", "corpus-reasoning"]
    assert m2["pretrain"]["blend"] == {"general": 0.8, "reasoning": 0.2}
    # Phase 2 started from phase 1's weights and optimizer, not from scratch: its first
    # loss is near phase 1's last, far below the untrained model's first loss.
    assert p2["metrics"]["7"]["loss"] < p1["metrics"]["1"]["loss"] - 0.3
    assert m2["metrics"]["loss"] < m1["metrics"]["loss_first"]
    # Outputs: the final Megatron checkpoint (complete) and the HF export, logged as a model.
    for m, record in ((m1, p1), (m2, p2)):
        assert (Path(m["outputs"]["mcore_checkpoint"]) / "COMPLETE").is_file()
        assert record["models"] == [m["outputs"]["model_dir"]]


@pytest.mark.slow
def test_hf_export_loads_and_matches_megatron_loss(clean: Path) -> None:
    from slingshot.models.hf import load_model_and_tokenizer

    p2 = _read(clean, "p2")
    model, tokenizer = load_model_and_tokenizer(p2["manifest"]["outputs"]["model_dir"])
    assert model.config.vocab_size == len(tokenizer) == p2["manifest"]["pretrain"]["vocab_size"]
    batch = torch.load(clean / "p2.probe.pt")
    with torch.no_grad():
        logits = model(input_ids=batch["tokens"]).logits.float()
    hf_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).item()
    assert hf_loss == pytest.approx(p2["probe"], rel=1e-5, abs=1e-5)
    assert hf_loss < 6.0  # trained: well below ln(512) = 6.24 of a uniform guess


@pytest.mark.slow
def test_stop_and_resume_in_fresh_processes_matches_uninterrupted(
    clean: Path, tmp_path: Path, small_data: dict[str, Any]
) -> None:
    root = tmp_path
    p1_ref = _read(clean, "p1")
    _spawn(root, small_data, [{"name": "p1a", "dir": "run", "phase": "phase1", "stop_after": 3}])
    _spawn(
        root,
        small_data,
        [
            {"name": "p1b", "dir": "run", "phase": "phase1"},
            {
                "name": "p2a",
                "dir": "run",
                "phase": "phase2",
                "upstream": {P1: str(root / "p1b.json")},
                "model_from": P1,
                "stop_after": 1,
            },
        ],
    )
    _spawn(
        root,
        small_data,
        [
            {
                "name": "p2b",
                "dir": "run",
                "phase": "phase2",
                "upstream": {P1: str(root / "p1b.json")},
                "model_from": P1,
            }
        ],
    )
    p1a, p1b, p2a, p2b = (_read(root, n) for n in ("p1a", "p1b", "p2a", "p2b"))
    assert p1a["interrupted_at"] == 3 and sorted(p1a["metrics"]) == ["1", "2", "3"]
    assert p1a["pid"] != p1b["pid"] != p2b["pid"]
    # Phase 1 resumed at step 4 (the stop saved step 3); phase 2 at its second step (8).
    assert sorted(int(s) for s in p1b["metrics"]) == [4, 5, 6]
    assert p2a["interrupted_at"] == 1 and sorted(p2a["metrics"]) == ["7"]
    assert sorted(int(s) for s in p2b["metrics"]) == [8, 9, 10]
    reference = _losses(p1_ref, _read(clean, "p2"))
    resumed = _losses(p1a, p1b, p2a, p2b)
    assert sorted(resumed) == list(range(1, 11))
    for step, loss in reference.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    # Nothing repeated or skipped: the same consumption as the uninterrupted run.
    assert (
        p2b["manifest"]["pretrain"]["consumed_samples"]
        == _read(clean, "p2")["manifest"]["pretrain"]["consumed_samples"]
    )


@pytest.mark.slow
def test_tensor_parallel_2_matches_1_process(clean: Path, tmp_path: Path, small_data: dict[str, Any]) -> None:
    """TP=2 (two gloo processes, DP=1): the same losses as TP=1, and an export that loads."""
    tp2 = {"stages": {"pretrain": {**PRETRAIN, "parallel": {"tensor_parallel_size": 2}}}}
    _spawn(tmp_path, small_data, [{"name": "p1", "dir": "run", "phase": "phase1"}], tp2, nprocs=2)
    ref, got = _read(clean, "p1"), _read(tmp_path, "p1")
    assert (
        got["manifest"]["pretrain"]["world_size"] == 2
        and got["manifest"]["pretrain"]["data_parallel_size"] == 1
    )
    for step, loss in _losses(ref).items():
        assert _losses(got)[step] == pytest.approx(loss, rel=1e-4), step
    assert got["manifest"]["pretrain"]["consumed_samples"] == ref["manifest"]["pretrain"]["consumed_samples"]
    from slingshot.models.hf import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(got["manifest"]["outputs"]["model_dir"])
    assert model.config.num_attention_heads == 4
