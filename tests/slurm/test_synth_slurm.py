"""Synthesis feature extraction as a Slurm job array on the dev cluster: the shards' merged
features equal one in-process shard, and complete shards are reused (no resubmission)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from stages import make_ctx, pipeline_config, tiny_model_dir

from slingshot.data.tasks import load_entries
from slingshot.data.teacher import ProceduralTeacher
from slingshot.launch.array import array_resources, run_array
from slingshot.stages.synth import feature_extractor, proxy_model_dir
from slingshot.synth.features import FeatureSpec
from slingshot.synth.shards import ShardedFeatures, shard_path

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _extractor(tmp: Path, small_data: dict, model: Path, backend: str, shards: int) -> ShardedFeatures:
    cfg = pipeline_config(
        tmp,
        {
            "launcher": {"backend": backend, "site": "dev", "poll_interval_s": 0.5},
            "stages": {
                "synth": {
                    "feature_shards": shards,
                    "resources": {"cpus_per_task": 1, "time_min": 10},
                }
            },
        },
    )
    ctx = make_ctx(tmp, "synth", cfg, {"data": small_data}, init_model=str(model))
    share = array_resources(ctx.config.resources, ctx.config)  # as the job layer does
    ctx.run_array = partial(run_array, cfg=cfg, resources=share)
    spec = FeatureSpec(dim=64, seed=11, block_size=4096, batch_size=4)
    return feature_extractor(ctx, ctx.config, proxy_model_dir(ctx, ctx.config), spec)


def test_job_array_shards_give_the_same_features_as_one_shard(small_data, tmp_path):
    model = tiny_model_dir(tmp_path / "model", Path(small_data["outputs"]["tokenizer_dir"]))
    teacher = ProceduralTeacher(error_rate=0.0, seed=0)
    entries = load_entries(small_data["outputs"]["tasks_train"])[:10]
    pairs = [(e["question"], teacher.solve(e).completion) for e in entries]

    local = _extractor(tmp_path / "local", small_data, model, "local", 1)
    one, tokens_one = local(pairs, 1)

    array = _extractor(tmp_path / "slurm", small_data, model, "slurm", 3)
    submitted: list[list[str]] = []
    original = array.run_array

    def recording(task, indices, folder):
        submitted.append(list(indices))
        return original(task, indices, folder)

    array.run_array = recording
    three, tokens_three = array(pairs, 1)
    assert submitted == [[0, 1, 2]]
    round_dir = array.round_dir(1)
    # The array really ran on Slurm: submitit wrote one log per array task.
    logs = list((round_dir / "submitit").glob("*_*_0_log.out"))
    assert len(logs) == 3, sorted(p.name for p in (round_dir / "submitit").iterdir())
    torch.testing.assert_close(three, one, rtol=1e-4, atol=1e-5)
    assert tokens_three == tokens_one

    # Complete shards are reused: nothing is submitted; a lost shard alone is redone on Slurm.
    array(pairs, 1)
    assert submitted == [[0, 1, 2]]
    shard_path(round_dir, 2).unlink()
    again, _ = array(pairs, 1)
    assert submitted == [[0, 1, 2], [2]]
    torch.testing.assert_close(again, one, rtol=1e-4, atol=1e-5)
