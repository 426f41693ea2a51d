"""The Megatron-Core pretraining stage on the dev Slurm cluster: a 2-process data-parallel
job (n1 + n2, gloo) through Snakemake and the launcher follows the same loss curve as a
1-process job with the same global batch (Megatron's DDP averages the gradients)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from pipeline import REPO, manifest, pipeline_env, run_snakemake, write_config
from stages import SMALL_DATA

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

KEY = "main/pretrain-p1"
PRETRAIN: dict[str, Any] = {
    "model": {
        "num_layers": 2,
        "hidden_size": 64,
        "ffn_hidden_size": 128,
        "num_attention_heads": 4,
        "num_query_groups": 2,
        "seq_length": 64,
    },
    "total_tokens": 8 * 8 * 64,  # 8 steps of 8 sequences
    "micro_batch_size": 4,
    "global_batch_size": 8,
    "log_every": 1,
    "optimizer": {"lr": 0.003, "warmup_steps": 2},
    "phases": [{"name": "p1", "token_fraction": 1.0, "blend": {"general": 0.8, "reasoning": 0.2}}],
}


def _run(directory: Path, name: str, nodes: int) -> tuple[dict[str, Any], dict[int, float]]:
    directory.mkdir()
    overrides = {
        "pipeline": {"name": name},
        "launcher": {"backend": "slurm", "site": "dev", "poll_interval_s": 1.0},
        "data": {
            **SMALL_DATA,
            "families": [*SMALL_DATA["families"], "letter_counting"],
        },  # + the base task_settings
        "stages": {
            "pretrain": {
                **PRETRAIN,
                "resources": {"nodes": nodes, "tasks_per_node": 1, "cpus_per_task": 1, "time_min": 15},
            }
        },
    }
    config = write_config(
        directory, overrides, variants={"main": {}}, base=REPO / "workflow/config/config.yaml"
    )
    out = run_snakemake(directory, config, "--until", "pretrain", env=pipeline_env(), timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    m = manifest(directory, KEY)
    history = MlflowClient(f"sqlite:///{directory}/results/mlflow.db").get_metric_history(
        m["mlflow_run_id"], "loss"
    )
    return m, {h.step: h.value for h in history}


def test_two_process_data_parallel_matches_one_process(tmp_path: Path) -> None:
    m2, dp2 = _run(tmp_path / "dp2", "pretrain-dp2", nodes=2)
    m1, dp1 = _run(tmp_path / "dp1", "pretrain-dp1", nodes=1)
    assert m2["pretrain"]["world_size"] == m2["pretrain"]["data_parallel_size"] == 2
    assert m1["pretrain"]["world_size"] == 1
    assert sorted(dp1) == sorted(dp2) == list(range(1, 9))
    for step in dp1:
        assert dp2[step] == pytest.approx(dp1[step], rel=1e-4), step
    assert dp1[8] < dp1[1] - 0.3  # it learns
    # The same samples were consumed: each rank read its half of every global batch.
    assert m2["pretrain"]["consumed_samples"] == m1["pretrain"]["consumed_samples"]
    assert sum(m1["pretrain"]["consumed_samples"].values()) == 8 * 8
