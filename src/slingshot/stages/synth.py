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
4. computes the survivors' gradient features (sharded: a Slurm job array on Slurm);
5. keeps a candidate only if its nearest centroid is among the keep_cluster_fraction
   least populated clusters (diversity filter), and adds it to the pool;

until the pool reaches target_size or max_rounds. The state (pool, features, all
candidates' features, seen hashes, RNG, round) is checkpointed after every round, and
every feature shard is a file reused when present, so a stop loses at most the shards
in flight. Outputs: an HF dataset (problem, solution, answer, task, round, cluster) at
``outputs["dataset"]`` and a cluster-size plot; metrics: per round pool size, G-Vendi
and the keep ratio of each filter, and at the end the G-Vendi of the selected set
against random same-size subsets of the unfiltered candidates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slingshot.algorithms.gvendi import g_vendi
from slingshot.algorithms.kmeans import spherical_kmeans
from slingshot.checkpoint import StageInterrupted, load_torch, rng_state, save_torch, set_rng_state
from slingshot.config import SynthConfig
from slingshot.context import StageContext, StageResult
from slingshot.data.tasks import derive_seed, load_entries
from slingshot.data.teacher import render_trace
from slingshot.io import atomic_dir, atomic_path, atomic_write_text, sha256_file
from slingshot.launch.array import run_array
from slingshot.loop import resume_step, save_checkpoint
from slingshot.rewards import is_correct
from slingshot.rewards.extract import extract_answer
from slingshot.synth.features import FeatureSpec
from slingshot.synth.generators import Generator, make_generator, request_seed
from slingshot.synth.selection import (
    diversity_filter,
    n_clusters,
    normalize_answer,
    quality_vote,
    sample_few_shot,
    sparse_clusters,
)
from slingshot.synth.shards import extract_features

BASELINE_DRAWS = 20  # random subsets averaged for the baseline G-Vendi


@dataclass
class SynthState:
    """Everything a round needs; saved whole after every round."""

    round: int = 0
    pool: list[dict[str, Any]] = field(default_factory=list)  # records, see _record
    features: Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # [pool, dim]
    cand_features: Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # quality-passed candidates
    cand_kept: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    seen: set[str] = field(default_factory=set)  # hashes never to generate again
    history: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0

    def save(self, directory: Path) -> None:
        save_torch(
            directory / "state.pt",
            {
                "round": self.round,
                "pool": self.pool,
                "features": self.features,
                "cand_features": self.cand_features,
                "cand_kept": self.cand_kept,
                "seen": sorted(self.seen),
                "history": self.history,
                "tokens": self.tokens,
                "rng": rng_state(),
            },
        )

    def load(self, directory: Path) -> None:
        raw = load_torch(directory / "state.pt")
        self.round, self.pool, self.features = raw["round"], raw["pool"], raw["features"]
        self.cand_features, self.cand_kept = raw["cand_features"], raw["cand_kept"]
        self.seen, self.history, self.tokens = set(raw["seen"]), raw["history"], raw["tokens"]
        set_rng_state(raw["rng"])


def _record(entry: dict, solution: str, answer: str, difficulty: float, round_index: int) -> dict[str, Any]:
    return {
        "entry": entry,  # the task entry: the generator's few-shot example in later rounds
        "problem": entry["question"],
        "solution": solution,
        "answer": answer,
        "task": str(entry.get("family") or entry.get("dataset") or "synthetic"),
        "round": round_index,
        "difficulty": difficulty,
    }


class FeatureExtractor:
    """Features of (problem, solution) pairs for one round, sharded as the config says."""

    def __init__(self, ctx: StageContext, cfg: SynthConfig, model_dir: Path, spec: FeatureSpec) -> None:
        self.ctx, self.cfg, self.model_dir, self.spec = ctx, cfg, model_dir, spec

    def _runner(self, task: Callable[[int], str], indices: list[int], folder: Path) -> list[str]:
        if self.cfg.feature_shards == 1:
            return [task(i) for i in indices]  # this job computes its own single shard
        return run_array(
            task,
            indices,
            cfg=self.ctx.pipeline,
            resources=self.cfg.resources,
            folder=folder,
            name=f"{self.ctx.pipeline.pipeline.name}.{self.ctx.stage}.features",
        )

    def __call__(self, pairs: list[tuple[str, str]], round_index: int) -> tuple[Tensor, int]:
        round_dir = self.ctx.work_dir / "features" / f"round-{round_index:04d}"
        return extract_features(
            pairs, self.spec, self.model_dir, round_dir, self.cfg.feature_shards, self._runner
        )


def proxy_model_dir(ctx: StageContext, cfg: SynthConfig) -> Path:
    path = Path(cfg.proxy_model) if cfg.proxy_model else ctx.input_model_dir
    if path is None:
        raise ValueError(
            f"stage {ctx.stage}: no proxy model for gradient features: set stages.synth.proxy_model "
            "or give the stage an upstream model"
        )
    return path


def _pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["problem"], r["solution"]) for r in records]


def _verifies(entry: dict, completion: str) -> bool:
    """Correct against the gold answer; the exact-string check first (the verifier is slow)."""
    if normalize_answer(extract_answer(completion)) == normalize_answer(str(entry["answer"])):
        return True
    return is_correct(entry, completion)


def build_seed_pool(
    ctx: StageContext, cfg: SynthConfig, generator: Generator, seed: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    data = ctx.upstream_of_kind("data")["outputs"]
    entries = load_entries(data["tasks_train"])
    rng = np.random.default_rng(derive_seed(seed, "synth-seed-pool"))
    picked = sorted(rng.choice(len(entries), size=min(cfg.seed_pool_size, len(entries)), replace=False))
    pool, from_generator = [], 0
    for i in picked:
        entry = entries[int(i)]
        completions = generator.solve(
            entry, cfg.solutions_per_problem, derive_seed(seed, "seed", entry["id"])
        )
        correct = [_verifies(entry, c) for c in completions]
        if any(correct):
            solution = completions[correct.index(True)]
            from_generator += 1
        else:
            # Seeds are gold problems: the pool starts from correct solutions only.
            solution = render_trace(entry).completion
        answer = normalize_answer(extract_answer(solution)) or str(entry["answer"])
        difficulty = 1.0 - sum(correct) / len(correct)
        pool.append(_record(entry, solution, answer, difficulty, 0))
    stats = {"seed_pool": float(len(pool)), "seed_generator_solved": from_generator / max(1, len(pool))}
    return pool, stats


def _gvendi(x: Tensor) -> float:
    return g_vendi(x) if x.shape[0] else 0.0


def run_round(
    ctx: StageContext,
    cfg: SynthConfig,
    state: SynthState,
    generator: Generator,
    features_of: FeatureExtractor,
    seed: int,
    round_index: int,
) -> dict[str, float]:
    """One round of generate → quality filter → features → diversity filter → add."""
    k = n_clusters(len(state.pool), cfg.cluster_fraction)
    centroids, assign = spherical_kmeans(
        state.features, k, cfg.kmeans_iters, seed=derive_seed(seed, "kmeans", round_index)
    )
    sparse = sparse_clusters(torch.bincount(assign, minlength=k), cfg.keep_cluster_fraction)

    rng = np.random.default_rng(derive_seed(seed, "synth-round", round_index))
    difficulties = [r["difficulty"] for r in state.pool]
    problems: list[dict] = []
    for request in range(cfg.requests_per_round):
        shots = sample_few_shot(difficulties, cfg.few_shot, rng, cfg.difficulty_floor)
        examples = [state.pool[i]["entry"] for i in shots]
        # ``seen`` grows as problems come back, so no problem is generated twice.
        problems += generator.new_problems(
            examples, cfg.problems_per_request, request_seed(seed, round_index, request), state.seen
        )
        state.seen.update(p["hash"] for p in problems)

    passed: list[dict[str, Any]] = []
    for problem in problems:
        completions = generator.solve(
            problem, cfg.solutions_per_problem, derive_seed(seed, "solve", round_index, problem["hash"])
        )
        vote = quality_vote(completions)
        if vote.passed:
            assert vote.solution is not None and vote.answer is not None
            passed.append(
                _record(problem, completions[vote.solution], vote.answer, 1.0 - vote.agreement, round_index)
            )

    feats, tokens = features_of(_pairs(passed), round_index)
    state.tokens += tokens
    keep, nearest = diversity_filter(feats, centroids, sparse)
    room = cfg.target_size - len(state.pool)
    kept_idx = [i for i in range(len(passed)) if bool(keep[i])][: max(0, room)]
    kept_mask = torch.zeros(len(passed), dtype=torch.bool)
    kept_mask[kept_idx] = True
    for i in kept_idx:
        passed[i]["admitted_cluster"] = int(nearest[i])
        state.pool.append(passed[i])
    if kept_idx:
        state.features = torch.cat([state.features, feats[kept_idx]])
    if feats.shape[0]:
        dim = feats.shape[1]
        prev = state.cand_features if state.cand_features.numel() else torch.zeros(0, dim)
        state.cand_features = torch.cat([prev, feats])
        state.cand_kept = torch.cat([state.cand_kept, kept_mask])
    return {
        "pool_size": float(len(state.pool)),
        "gvendi": _gvendi(state.features),
        "clusters": float(k),
        "generated": float(len(problems)),
        "quality_passed": float(len(passed)),
        "quality_keep_ratio": len(passed) / max(1, len(problems)),
        "diversity_kept": float(len(kept_idx)),
        "diversity_keep_ratio": len(kept_idx) / max(1, len(passed)),
        "overall_keep_ratio": len(kept_idx) / max(1, len(problems)),
    }


def baseline_comparison(state: SynthState, seed: int) -> dict[str, float]:
    """G-Vendi of the selected candidates vs random same-size subsets of all unfiltered ones."""
    selected = state.cand_features[state.cand_kept] if state.cand_kept.numel() else torch.zeros(0, 0)
    n = selected.shape[0]
    if n == 0:
        return {"selected_size": 0.0}
    gen = torch.Generator().manual_seed(derive_seed(seed, "synth-baseline"))
    draws = [
        g_vendi(state.cand_features[torch.randperm(state.cand_features.shape[0], generator=gen)[:n]])
        for _ in range(BASELINE_DRAWS)
    ]
    chosen = g_vendi(selected)
    return {
        "selected_size": float(n),
        "candidates": float(state.cand_features.shape[0]),
        "gvendi_selected": chosen,
        "gvendi_random_subset": draws[0],
        "gvendi_random_subset_mean": float(np.mean(draws)),
        "gvendi_random_subset_std": float(np.std(draws)),
        "gvendi_selected_beats_random_frac": float(np.mean([chosen > d for d in draws])),
        "gvendi_selected_qinf": g_vendi(selected, q=float("inf")),
    }


def save_dataset(records: list[dict[str, Any]], clusters: list[int], out: Path) -> Path:
    """save_to_disk into a temp dir beside ``out``, then swap it in whole."""
    from datasets import Dataset

    table = {
        "problem": [r["problem"] for r in records],
        "solution": [r["solution"] for r in records],
        "answer": [r["answer"] for r in records],
        "task": [r["task"] for r in records],
        "round": [int(r["round"]) for r in records],
        "cluster": [int(c) for c in clusters],
    }
    with atomic_dir(out) as tmp:
        Dataset.from_dict(table).save_to_disk(str(tmp))
    return out


def plot_clusters(records: list[dict[str, Any]], clusters: list[int], k: int, path: Path) -> Path:
    """Members per cluster of the final pool (seed vs synthesized), clusters sorted by seed count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed_counts = np.bincount(
        [c for r, c in zip(records, clusters, strict=True) if r["round"] == 0], minlength=k
    )
    synth_counts = np.bincount(
        [c for r, c in zip(records, clusters, strict=True) if r["round"] > 0], minlength=k
    )
    order = np.argsort(seed_counts, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(k)
    ax.bar(x, seed_counts[order], label="seed pool", color="#888888")
    ax.bar(x, synth_counts[order], bottom=seed_counts[order], label="synthesized", color="#d95f02")
    ax.set_xlabel("cluster (sorted by seed members)")
    ax.set_ylabel("members")
    ax.set_title(f"Final pool: {len(records)} samples in {k} gradient-feature clusters")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, SynthConfig)
    if ctx.dist.world_size > 1:
        raise ValueError(
            f"stage {ctx.stage} runs as one task; spread feature extraction with feature_shards instead"
        )
    seed = derive_seed(ctx.pipeline.pipeline.seed, "synth", ctx.variant)
    data = ctx.upstream_of_kind("data")["outputs"]
    model_dir = proxy_model_dir(ctx, cfg)
    spec = FeatureSpec(
        dim=cfg.feature_dim,
        # One projection matrix for the whole stage: every shard and round must share it.
        seed=derive_seed(ctx.pipeline.pipeline.seed, "synth-projection"),
        block_size=cfg.projection_block_size,
        method=cfg.feature_method,
        batch_size=cfg.feature_batch_size,
        memory_mb=cfg.feature_memory_mb,
        max_length=cfg.feature_max_tokens,
    )
    features_of = FeatureExtractor(ctx, cfg, model_dir, spec)
    generator = make_generator(
        cfg.generator,
        seed=seed,
        problem_temperature=cfg.problem_temperature,
        solution_temperature=cfg.solution_temperature,
        top_p=cfg.top_p,
    )

    state = SynthState()
    if ctx.checkpoints.latest() is not None:
        resume_step(ctx, state)
    else:
        # Logged once, when the seed pool is drawn from it (a resumed run reuses that pool).
        ctx.tracker.log_input(
            "tasks-train", data["tasks_train"], sha256_file(data["tasks_train"]), "synth-seed"
        )
        state.pool, seed_stats = build_seed_pool(ctx, cfg, generator, seed)
        held_out = [data["tasks_validation"], data["tasks_test"]]
        state.seen = {e["hash"] for path in held_out for e in load_entries(path)}
        state.seen |= {r["entry"]["hash"] for r in state.pool}
        state.features, state.tokens = features_of(_pairs(state.pool), 0)
        metrics = {**seed_stats, "pool_size": float(len(state.pool)), "gvendi": _gvendi(state.features)}
        state.history.append(metrics)
        ctx.tracker.log_metrics(metrics, step=0)
        save_checkpoint(ctx, 0, state)

    while state.round < cfg.max_rounds and len(state.pool) < cfg.target_size:
        state.round += 1
        metrics = run_round(ctx, cfg, state, generator, features_of, seed, state.round)
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
        "gvendi_pool": _gvendi(state.features),
        "gvendi_pool_qinf": g_vendi(state.features, q=float("inf")),
        **baseline_comparison(state, seed),
    }
    k = n_clusters(len(state.pool), cfg.cluster_fraction)
    _, final_clusters = spherical_kmeans(state.features, k, cfg.kmeans_iters, seed=derive_seed(seed, "final"))
    clusters = final_clusters.tolist()
    outputs: dict[str, str] = {}
    if ctx.dist.is_main:
        dataset = save_dataset(state.pool, clusters, ctx.output_dir / "dataset")
        plot = plot_clusters(state.pool, clusters, k, ctx.output_dir / "cluster_sizes.png")
        history = ctx.output_dir / "rounds.json"
        atomic_write_text(history, json.dumps(state.history, indent=2))
        for path in (plot, history):
            ctx.tracker.log_artifact(path)
        outputs = {"dataset": str(dataset), "cluster_plot": str(plot), "rounds": str(history)}
    ctx.tracker.log_metrics({f"final_{key}": value for key, value in final.items()}, step=state.round)
    return StageResult(
        outputs=outputs, metrics=final, tokens=state.tokens, extra={"synth": {"rounds": state.round}}
    )
