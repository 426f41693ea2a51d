"""Prismatic synthesis stage end to end: outputs, the method's claim, resume, proxy model
and generator backends. The synth package's parts have their own tests (tests/unit/synth/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from stages import StopAfter, make_ctx, pipeline_config, tiny_model_dir

from slingshot.checkpoint import StageInterrupted
from slingshot.data.tasks import load_entries
from slingshot.rewards.extract import extract_answer
from slingshot.synth.selection import normalize_answer

# Small enough for 2 shared cores: ~6 rounds of 12 problems on a 2-layer model.
SMALL_SYNTH = {
    "target_size": 70,
    "seed_pool_size": 30,
    "feature_dim": 64,
    "projection_block_size": 4096,
    "requests_per_round": 10,
    "max_rounds": 5,
    "cluster_fraction": 0.2,
    "generator": {"error_rate": 0.2},
}
# Enough rounds for the diversity filter to show (about a minute on 2 cores).
LARGER_SYNTH = {
    "target_size": 200,
    "seed_pool_size": 60,
    "feature_dim": 128,
    "requests_per_round": 16,
    "max_rounds": 20,
    "cluster_fraction": 0.1,
    "generator": {"error_rate": 0.2},
}


@pytest.fixture(scope="module")
def tiny_model(small_data, tmp_path_factory) -> Path:
    return tiny_model_dir(
        tmp_path_factory.mktemp("proxy") / "model", Path(small_data["outputs"]["tokenizer_dir"])
    )


def _synth_ctx(tmp: Path, small_data: dict, model: Path, overrides: dict | None = None, triggers=None):
    cfg = pipeline_config(tmp, {"stages": {"synth": {**SMALL_SYNTH, **(overrides or {})}}})
    ctx = make_ctx(tmp, "synth", cfg, {"data": small_data}, init_model=str(model))
    if triggers is not None:
        ctx.triggers = triggers
    return ctx


@pytest.fixture(scope="module")
def uninterrupted(small_data, tiny_model, tmp_path_factory):
    from slingshot.stages import synth

    tmp = tmp_path_factory.mktemp("synth-full")
    ctx = _synth_ctx(tmp, small_data, tiny_model)
    return ctx, synth.run(ctx)


def _load(path: str):
    from datasets import load_from_disk

    return load_from_disk(path)


def test_end_to_end_outputs(uninterrupted):
    ctx, result = uninterrupted
    m = result.metrics
    ds = _load(result.outputs["dataset"])
    assert set(ds.column_names) == {"problem", "solution", "answer", "task", "round", "cluster"}
    assert len(ds) == m["pool_size"] and m["pool_size"] > SMALL_SYNTH["seed_pool_size"]
    assert m["pool_size"] <= SMALL_SYNTH["target_size"]
    assert sum(r == 0 for r in ds["round"]) == SMALL_SYNTH["seed_pool_size"]
    assert max(ds["round"]) == m["rounds"]
    for row in ds:
        assert row["solution"].startswith("<think>\n") and "</think>\n\\boxed{" in row["solution"]
        assert normalize_answer(extract_answer(row["solution"])) == row["answer"]
    k = round(SMALL_SYNTH["cluster_fraction"] * len(ds))
    assert set(ds["cluster"]) <= set(range(k))
    assert Path(result.outputs["cluster_plot"]).stat().st_size > 1000
    assert result.tokens > 0
    for key in ("gvendi_selected", "gvendi_random_subset", "gvendi_seed_pool", "gvendi_pool"):
        assert 1.0 <= m[key] <= SMALL_SYNTH["feature_dim"]
    assert m["selected_size"] == len(ds) - SMALL_SYNTH["seed_pool_size"]
    # The control set: the same seeds and as many candidates, drawn at random from all that passed
    # the quality filter (some the diversity filter rejected, so it differs from the selection).
    control = _load(result.outputs["random_subset_dataset"])
    assert control.column_names == ds.column_names and len(control) == len(ds) == m["random_subset_size"]
    assert (
        control["problem"][: SMALL_SYNTH["seed_pool_size"]] == ds["problem"][: SMALL_SYNTH["seed_pool_size"]]
    )
    if m["candidates"] > m["selected_size"]:
        assert set(control["problem"]) != set(ds["problem"])
    assert 1.0 <= m["gvendi_random_subset_pool"] <= SMALL_SYNTH["feature_dim"]
    # No held-out problem was generated.
    held = {
        e["question"]
        for split in ("tasks_validation", "tasks_test")
        for e in load_entries(ctx.upstream_of_kind("data")["outputs"][split])
    }
    assert not held & set(ds["problem"])


@pytest.mark.slow
def test_selected_set_is_more_diverse_than_random_subsets(small_data, tiny_model, tmp_path):
    """The method's claim, measured: G-Vendi of the diversity-filtered set vs random
    same-size subsets of the unfiltered candidates (mean of 20 draws)."""
    from slingshot.stages import synth

    result = synth.run(_synth_ctx(tmp_path, small_data, tiny_model, LARGER_SYNTH))
    m = result.metrics
    print(
        f"\nG-Vendi selected {m['gvendi_selected']:.3f} (n={int(m['selected_size'])}) vs random same-size "
        f"subset {m['gvendi_random_subset']:.3f} (20 draws: mean {m['gvendi_random_subset_mean']:.3f} "
        f"± {m['gvendi_random_subset_std']:.3f}, beaten in {m['gvendi_selected_beats_random_frac']:.0%}); "
        f"pool {m['gvendi_seed_pool']:.2f} -> {m['gvendi_pool']:.2f}"
    )
    assert m["gvendi_selected"] > m["gvendi_random_subset_mean"]
    assert m["gvendi_pool"] > m["gvendi_seed_pool"]


def test_resume_per_round_gives_the_same_pool(uninterrupted, small_data, tiny_model, tmp_path):
    from mlflow import MlflowClient

    from slingshot.stages import synth
    from slingshot.tracking import Tracker

    _, full = uninterrupted
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def tracker() -> Tracker:  # the same run across the restart, as the job wrapper does
        return Tracker.open_run(uri, "synth", tmp_path / "run_id", run_name="synth")

    first = _synth_ctx(tmp_path, small_data, tiny_model, triggers=StopAfter(1000, stop_after=2))
    first.tracker = tracker()
    with pytest.raises(StageInterrupted) as stopped:
        synth.run(first)
    assert stopped.value.step == 2
    resumed_ctx = _synth_ctx(tmp_path, small_data, tiny_model)
    resumed_ctx.tracker = tracker()
    assert resumed_ctx.checkpoints.latest().step == 2
    resumed = synth.run(resumed_ctx)
    a, b = _load(full.outputs["dataset"]), _load(resumed.outputs["dataset"])
    assert a.to_dict() == b.to_dict()
    control = (_load(r.outputs["random_subset_dataset"]).to_dict() for r in (full, resumed))
    assert next(control) == next(control)
    assert resumed.metrics == pytest.approx(full.metrics)

    client = MlflowClient(uri)
    run = client.get_run(resumed_ctx.tracker.run_id)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "pool_size")]
    assert steps == list(range(int(full.metrics["rounds"]) + 1))  # round 0 = seed pool; no duplicates
    for key in ("quality_keep_ratio", "diversity_keep_ratio", "gvendi"):
        assert len(client.get_metric_history(run.info.run_id, key)) >= 1
    assert run.data.metrics["final_gvendi_selected"] == pytest.approx(full.metrics["gvendi_selected"])
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tasks-train"]
    assert "cluster_sizes.png" in {f.path for f in client.list_artifacts(run.info.run_id)}


def test_proxy_model_path_and_vllm_error(small_data, tiny_model, tmp_path, monkeypatch):
    from slingshot.stages import synth

    cfg = pipeline_config(tmp_path, {"stages": {"synth": {"proxy_model": str(tiny_model)}}})
    ctx = make_ctx(tmp_path, "synth", cfg, {"data": small_data})  # no upstream model at all
    assert synth.proxy_model_dir(ctx, ctx.config) == tiny_model
    cfg = pipeline_config(
        tmp_path, {"stages": {"synth": {"generator": {"backend": "vllm", "model": str(tiny_model)}}}}
    )
    ctx = make_ctx(tmp_path, "synth", cfg, {"data": small_data}, init_model=str(tiny_model))
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM imports
    with pytest.raises(ImportError, match=r"needs vLLM installed: .*make install-vllm"):
        synth.run(ctx)


def test_stage_runs_with_the_hf_generator(small_data, tiny_model, tmp_path):
    """The HF path end to end on an untrained model: seeds fall back to reference traces,
    whatever the model writes goes through the same filters, and the outputs are complete."""
    from slingshot.stages import synth

    overrides = {
        "seed_pool_size": 8,
        "target_size": 20,
        "requests_per_round": 2,
        "few_shot": 2,
        "max_rounds": 1,
        "cluster_fraction": 0.25,
        "generator": {
            "backend": "hf",
            "model": str(tiny_model),
            "max_problem_tokens": 24,
            "max_solution_tokens": 24,
        },
    }
    result = synth.run(_synth_ctx(tmp_path, small_data, tiny_model, overrides))
    ds = _load(result.outputs["dataset"])
    assert result.metrics["rounds"] == 1 and len(ds) >= 8
    assert all(row["solution"].startswith("<think>") for row in ds if row["round"] == 0)


@pytest.mark.slow
def test_two_ranks_synthesize_the_one_rank_dataset(small_data, tiny_model, tmp_path):
    """Generation, votes and feature shards split over 2 gloo ranks; the dataset, its clusters
    and the metrics equal one rank's, and one rank resumes the 2-rank checkpoint."""
    import shutil

    from rank_worker import run_ranks, run_stage

    from slingshot.checkpoint import CheckpointManager

    tiny = {**SMALL_SYNTH, "seed_pool_size": 12, "target_size": 30, "requests_per_round": 4, "max_rounds": 2}
    spec = {
        "kind": "synth",
        "overrides": tiny,
        "upstream": {"data": small_data},
        "init_model": str(tiny_model),
    }
    one = run_stage({**spec, "root": str(tmp_path / "one")})
    two = run_ranks({**spec, "root": str(tmp_path / "two")})
    assert two["world_size"] == 2 and one["metrics"]["rounds"] == 2
    a, b = _load(one["outputs"]["dataset"]), _load(two["outputs"]["dataset"])
    assert len(a) > tiny["seed_pool_size"] and a.to_dict() == b.to_dict()
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-5) and two["tokens"] == one["tokens"]
    # Each round's features were computed as two shards, one per rank.
    shards = sorted(p.name for p in (tmp_path / "two").glob("work/main/synth/features/round-0001/shard-*.pt"))
    assert shards == ["shard-0000.pt", "shard-0001.pt"]
    # Resume on ONE rank from the 2-rank run's round-1 checkpoint: round 2 again, same dataset.
    checkpoints = CheckpointManager(tmp_path / "two" / "work" / "main" / "synth" / "checkpoints")
    shutil.rmtree(checkpoints.latest().path)
    assert checkpoints.latest().step == 1
    resumed = run_stage({**spec, "root": str(tmp_path / "two")})
    assert _load(resumed["outputs"]["dataset"]).to_dict() == a.to_dict()
    assert resumed["metrics"] == pytest.approx(one["metrics"], rel=1e-5)
