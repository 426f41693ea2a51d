"""Building the pool of Prismatic synthesis: the seed pool, and each round's candidates.

* The seed pool is gold problems from the training tasks; a seed's solution is the
  generator's first sample that verifies against the gold answer, else the procedural
  teacher's reference trace, so the pool starts from correct solutions only.
* A round asks the generator for new problems, each request showing few-shot pool
  examples drawn ∝ floor + difficulty, and keeps a problem only if a strict majority of
  its sampled solutions agree (the quality filter, :func:`slingshot.synth.selection.quality_vote`).

Every draw is seeded from the stage seed and the round (and request, problem), so a
resumed run regenerates nothing differently. Seeds, requests and problems are shared out
across ranks (:func:`slingshot.dist.map_sharded`) and come back in order: a request
excludes only what was seen before its round and duplicates between a round's requests
are dropped in request order, so no request depends on another and N ranks produce the
problems one does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slingshot.config import SynthConfig
from slingshot.data.tasks import derive_seed
from slingshot.data.teacher import render_trace
from slingshot.dist import map_sharded
from slingshot.rewards import is_correct
from slingshot.rewards.extract import extract_answer
from slingshot.synth.generators import Generator, request_seed
from slingshot.synth.selection import normalize_answer, quality_vote, sample_few_shot
from slingshot.synth.state import SynthState, pool_record


def verifies(entry: dict, completion: str) -> bool:
    """Correct against the gold answer; the exact-string check first (the verifier is slow)."""
    if normalize_answer(extract_answer(completion)) == normalize_answer(str(entry["answer"])):
        return True
    return is_correct(entry, completion)


def build_seed_pool(
    entries: list[dict], cfg: SynthConfig, generator: Generator, seed: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """``seed_pool_size`` training tasks drawn by ``seed``, each with a correct solution."""
    rng = np.random.default_rng(derive_seed(seed, "synth-seed-pool"))
    picked = sorted(rng.choice(len(entries), size=min(cfg.seed_pool_size, len(entries)), replace=False))

    def seed_record(entry: dict) -> tuple[dict[str, Any], bool]:
        completions = generator.solve(
            entry, cfg.solutions_per_problem, derive_seed(seed, "seed", entry["id"])
        )
        correct = [verifies(entry, c) for c in completions]
        # Seeds are gold problems: the pool starts from correct solutions only.
        solution = completions[correct.index(True)] if any(correct) else render_trace(entry).completion
        answer = normalize_answer(extract_answer(solution)) or str(entry["answer"])
        difficulty = 1.0 - sum(correct) / len(correct)
        return pool_record(entry, solution, answer, difficulty, 0), any(correct)

    solved = map_sharded(seed_record, [entries[int(i)] for i in picked])  # ranks share the seeds
    pool = [record for record, _ in solved]
    from_generator = sum(ok for _, ok in solved)
    stats = {"seed_pool": float(len(pool)), "seed_generator_solved": from_generator / max(1, len(pool))}
    return pool, stats


def new_problems(
    cfg: SynthConfig, state: SynthState, generator: Generator, seed: int, round_index: int
) -> list[dict]:
    """``requests_per_round`` generator requests, each modelled on few-shot pool examples."""
    rng = np.random.default_rng(derive_seed(seed, "synth-round", round_index))
    difficulties = [r["difficulty"] for r in state.pool]
    # Every rank draws every request's shots (one RNG stream), then runs its share.
    requests = [
        (
            request,
            [
                state.pool[i]["entry"]
                for i in sample_few_shot(difficulties, cfg.few_shot, rng, cfg.difficulty_floor)
            ],
        )
        for request in range(cfg.requests_per_round)
    ]

    def run_request(request: tuple[int, list[dict]]) -> list[dict]:
        index, examples = request
        # A copy of what was seen before the round: a request never depends on another's output.
        exclude = set(state.seen)
        return generator.new_problems(
            examples, cfg.problems_per_request, request_seed(seed, round_index, index), exclude
        )

    problems: list[dict] = []
    for batch in map_sharded(run_request, requests):
        for problem in batch:  # in request order: a problem two requests wrote is kept once
            if problem["hash"] not in state.seen:
                state.seen.add(problem["hash"])
                problems.append(problem)
    return problems


def majority_verified(
    cfg: SynthConfig, problems: list[dict], generator: Generator, seed: int, round_index: int
) -> list[dict[str, Any]]:
    """Pool records of the problems whose sampled solutions agree by strict majority."""

    def vote_on(problem: dict) -> dict[str, Any] | None:
        completions = generator.solve(
            problem, cfg.solutions_per_problem, derive_seed(seed, "solve", round_index, problem["hash"])
        )
        vote = quality_vote(completions)
        if not vote.passed:
            return None
        assert vote.solution is not None and vote.answer is not None
        return pool_record(
            problem, completions[vote.solution], vote.answer, 1.0 - vote.agreement, round_index
        )

    # Ranks share the problems; the records come back in problem order on every rank.
    return [record for record in map_sharded(vote_on, problems) if record is not None]
