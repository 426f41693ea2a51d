"""Prismatic synthesis (SPEC §3): grow a diverse, majority-verified problem pool.

Round 0 builds the seed pool from the data stage's training tasks (gold problems; a
seed's solution is the generator's first sample that verifies against the gold answer,
else the procedural teacher's reference trace) and computes its gradient features.
Each round r = 1, 2, ... then

1. clusters the pool's features (spherical k-means, k = cluster_fraction × pool);
2. asks the generator for requests_per_round × problems_per_request new problems, each
   request showing few_shot pool examples drawn ∝ difficulty_floor + difficulty;
3. samples solutions_per_problem solutions per problem and keeps a problem only if a
   strict majority agree on the final answer (quality filter; one agreeing solution);
4. computes the survivors' gradient features (one shard per rank on the rank's device, or,
   from a one-task job, feature_shards shards fanned out through ``ctx.run_array``: one
   Slurm job array on Slurm whose tasks request ``array_task``'s share);
5. keeps a candidate only if its nearest centroid is among the keep_cluster_fraction
   least populated clusters (diversity filter), and adds it to the pool;

until the pool reaches target_size or max_rounds. The state (pool, features, all
candidates' features, seen hashes, RNG, round) is checkpointed after every round, and
every feature shard is a file reused when present, so a stop loses at most the shards
in flight. Outputs: an HF dataset (problem, solution, answer, task, round, cluster) at
``outputs["dataset"]``, the control set (the seeds plus a random subset of all candidates
of the selection's size) at ``outputs["random_subset_dataset"]``, and a cluster-size plot; metrics: per round pool size, G-Vendi
and the keep ratio of each filter, and at the end the G-Vendi of the selected set
against random same-size subsets of the unfiltered candidates.

On N ranks (one task per GPU) the seeds' and new problems' generation and the solutions'
votes are shared out by request/problem and gathered in order, each rank computes its
feature shard, and the clustering, filters and state (small CPU tensors) are replicated
on every rank: every rank holds the state one rank would, checkpoints are written by rank
0, and the dataset equals the one-rank dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from slingshot.algorithms.gvendi import g_vendi
from slingshot.algorithms.kmeans import nearest_centroid, spherical_kmeans
from slingshot.checkpoint import StageInterrupted
from slingshot.config import SynthConfig
from slingshot.context import StageContext, StageResult
from slingshot.data.tasks import derive_seed, load_entries
from slingshot.io import atomic_write_text
from slingshot.loop import resume_step, save_checkpoint
from slingshot.synth.diversity import baseline_comparison, pool_gvendi, random_subset
from slingshot.synth.features import FeatureSpec
from slingshot.synth.generators import Generator, make_generator
from slingshot.synth.outputs import plot_clusters, save_dataset
from slingshot.synth.pool import build_seed_pool, majority_verified, new_problems
from slingshot.synth.selection import diversity_filter, n_clusters, sparse_clusters
from slingshot.synth.shards import ShardedFeatures
from slingshot.synth.state import SynthState, feature_pairs


def proxy_model_dir(ctx: StageContext, cfg: SynthConfig) -> Path:
    path = Path(cfg.proxy_model) if cfg.proxy_model else ctx.input_model_dir
    if path is None:
        raise ValueError(
            f"stage {ctx.stage}: no proxy model for gradient features: set stages.synth.proxy_model "
            "or give the stage an upstream model"
        )
    return path


def feature_extractor(
    ctx: StageContext, cfg: SynthConfig, model_dir: Path, spec: FeatureSpec
) -> ShardedFeatures:
    """Features in shards: with ``feature_shards: 1`` one per rank of this job, each on its
    rank's device; more fan out from a one-task job through ``ctx.run_array`` (a Slurm job
    array whose tasks request ``array_task``'s share)."""
    name = f"{ctx.pipeline.pipeline.name}.{ctx.stage}.features"
    rank, world = ctx.dist.rank, ctx.dist.world_size

    def run_array(task: Callable[[int], str], indices: list[int], folder: Path) -> list[str]:
        if cfg.feature_shards == 1:
            return [task(i) for i in indices if i % world == rank]  # shard i on rank i
        return ctx.run_array(task, indices, folder=folder, name=name)

    if cfg.feature_shards == 1:
        return ShardedFeatures(
            spec, model_dir, ctx.work_dir / "features", world, run_array, device=str(ctx.dist.device)
        )
    return ShardedFeatures(spec, model_dir, ctx.work_dir / "features", cfg.feature_shards, run_array)


def run_round(
    cfg: SynthConfig,
    state: SynthState,
    generator: Generator,
    features_of: ShardedFeatures,
    seed: int,
    round_index: int,
) -> dict[str, float]:
    """One round of generate → quality filter → features → diversity filter → add."""
    k = n_clusters(len(state.pool), cfg.cluster_fraction)
    centroids, assign = spherical_kmeans(
        state.features, k, cfg.kmeans_iters, seed=derive_seed(seed, "kmeans", round_index)
    )
    sparse = sparse_clusters(torch.bincount(assign, minlength=k), cfg.keep_cluster_fraction)
    problems = new_problems(cfg, state, generator, seed, round_index)
    passed = majority_verified(cfg, problems, generator, seed, round_index)
    feats, tokens = features_of(feature_pairs(passed), round_index)
    state.tokens += tokens
    keep, nearest = diversity_filter(feats, centroids, sparse)
    kept = state.admit(passed, feats, keep, nearest, room=cfg.target_size - len(state.pool))
    return {
        "pool_size": float(len(state.pool)),
        "gvendi": pool_gvendi(state.features),
        "clusters": float(k),
        "generated": float(len(problems)),
        "quality_passed": float(len(passed)),
        "quality_keep_ratio": len(passed) / max(1, len(problems)),
        "diversity_kept": float(len(kept)),
        "diversity_keep_ratio": len(kept) / max(1, len(passed)),
        "overall_keep_ratio": len(kept) / max(1, len(problems)),
    }


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, SynthConfig)
    if ctx.dist.world_size > 1 and cfg.feature_shards > 1:  # the config check refuses it too
        raise ValueError(
            f"stage {ctx.stage}: stages.synth.feature_shards > 1 fans out from a one-task job; "
            f"with {ctx.dist.world_size} tasks the ranks compute the features (set feature_shards: 1)"
        )
    seed = derive_seed(ctx.pipeline.pipeline.seed, "synth", ctx.variant)
    data = ctx.upstream_of_kind("data")["outputs"]
    # One projection matrix for the whole stage: every shard and round must share it.
    spec = FeatureSpec.from_config(cfg, seed=derive_seed(ctx.pipeline.pipeline.seed, "synth-projection"))
    features_of = feature_extractor(ctx, cfg, proxy_model_dir(ctx, cfg), spec)
    generator = make_generator(cfg, seed)

    state = SynthState()
    if ctx.checkpoints.latest() is not None:
        resume_step(ctx, state)
    else:
        # Logged once, when the seed pool is drawn from it (a resumed run reuses that pool).
        ctx.log_file_input("tasks-train", data["tasks_train"], context="synth-seed")
        state.pool, seed_stats = build_seed_pool(load_entries(data["tasks_train"]), cfg, generator, seed)
        held_out = [data["tasks_validation"], data["tasks_test"]]
        state.seen = {e["hash"] for path in held_out for e in load_entries(path)}
        state.seen |= {r["entry"]["hash"] for r in state.pool}
        state.features, state.tokens = features_of(feature_pairs(state.pool), 0)
        metrics = {**seed_stats, "pool_size": float(len(state.pool)), "gvendi": pool_gvendi(state.features)}
        state.history.append(metrics)
        ctx.tracker.log_metrics(metrics, step=0)
        save_checkpoint(ctx, 0, state)

    while state.round < cfg.max_rounds and len(state.pool) < cfg.target_size:
        state.round += 1
        metrics = run_round(cfg, state, generator, features_of, seed, state.round)
        state.history.append(metrics)
        ctx.tracker.log_metrics(metrics, step=state.round)
        print(
            f"[slingshot] {ctx.stage} round {state.round}: pool {len(state.pool)} "
            f"g-vendi {metrics['gvendi']:.2f} kept {int(metrics['diversity_kept'])}/{int(metrics['generated'])}",
            flush=True,
        )
        # Every round is saved: a round is minutes of generation on a real run.
        _, stop = ctx.triggers.check(state.round)
        save_checkpoint(ctx, state.round, state)
        if stop:
            raise StageInterrupted(state.round, ctx.triggers.stop_signal or "stop request")

    final = {
        "pool_size": float(len(state.pool)),
        "rounds": float(state.round),
        "gvendi_seed_pool": state.history[0]["gvendi"],
        "gvendi_pool": pool_gvendi(state.features),
        "gvendi_pool_qinf": g_vendi(state.features, q=float("inf")),
        **baseline_comparison(state, seed),
    }
    k = n_clusters(len(state.pool), cfg.cluster_fraction)
    centroids, final_clusters = spherical_kmeans(
        state.features, k, cfg.kmeans_iters, seed=derive_seed(seed, "final")
    )
    clusters = final_clusters.tolist()
    # The control set of the downstream claim: the seeds plus a random same-size subset of the
    # candidates instead of the diversity filter's choice.
    control = random_subset(state, seed)
    if control is not None:
        final["random_subset_size"] = float(len(control[0]))
        final["gvendi_random_subset_pool"] = pool_gvendi(control[1])
    outputs: dict[str, str] = {}
    if ctx.dist.is_main:
        dataset = save_dataset(state.pool, clusters, ctx.output_dir / "dataset")
        if control is not None:
            records, features = control
            control_clusters = nearest_centroid(features, centroids).tolist()
            outputs["random_subset_dataset"] = str(
                save_dataset(records, control_clusters, ctx.output_dir / "random_subset_dataset")
            )
        plot = plot_clusters(state.pool, clusters, k, ctx.output_dir / "cluster_sizes.png")
        history = ctx.output_dir / "rounds.json"
        atomic_write_text(history, json.dumps(state.history, indent=2))
        for path in (plot, history):
            ctx.tracker.log_artifact(path)
        outputs.update(dataset=str(dataset), cluster_plot=str(plot), rounds=str(history))
    ctx.tracker.log_metrics({f"final_{key}": value for key, value in final.items()}, step=state.round)
    return StageResult(
        outputs=outputs, metrics=final, tokens=state.tokens, extra={"synth": {"rounds": state.round}}
    )
