"""The state of Prismatic synthesis: the pool, its features and every candidate's features.

One :class:`SynthState` is everything a round needs; the stage saves it whole after every
round (with the RNG state), so a stopped run resumes at the round it had finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slingshot.checkpoint import load_torch, rng_state, save_torch, set_rng_state
from slingshot.data.teacher import task_prompt


def pool_record(
    entry: dict, solution: str, answer: str, difficulty: float, round_index: int
) -> dict[str, Any]:
    """One pool member: the task entry, its kept solution and where it came from."""
    return {
        "entry": entry,  # the task entry: the generator's few-shot example in later rounds
        "problem": task_prompt(entry),  # what SFT will be prompted with
        "solution": solution,
        "answer": answer,
        "task": str(entry.get("family") or entry.get("dataset") or "synthetic"),
        "round": round_index,
        "difficulty": difficulty,
    }


def feature_pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (problem, solution) pairs whose gradient features represent ``records``."""
    return [(r["problem"], r["solution"]) for r in records]


@dataclass
class SynthState:
    """Everything a round needs; saved whole after every round."""

    round: int = 0
    pool: list[dict[str, Any]] = field(default_factory=list)  # records, see pool_record
    features: Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # [pool, dim]
    cand_features: Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # quality-passed candidates
    cand_kept: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    # The quality-passed candidates themselves, aligned with cand_features (the random-subset
    # control set is drawn from them).
    candidates: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # hashes never to generate again
    history: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0

    def admit(
        self, candidates: list[dict[str, Any]], features: Tensor, keep: Tensor, nearest: Tensor, room: int
    ) -> list[int]:
        """Add the kept candidates (at most ``room``, in order) to the pool; return their indices.

        Every candidate's features are recorded with whether it was admitted: the baseline
        comparison draws random subsets from all of them.
        """
        kept_idx = [i for i in range(len(candidates)) if bool(keep[i])][: max(0, room)]
        kept_mask = torch.zeros(len(candidates), dtype=torch.bool)
        kept_mask[kept_idx] = True
        for i in kept_idx:
            candidates[i]["admitted_cluster"] = int(nearest[i])
            self.pool.append(candidates[i])
        if kept_idx:
            self.features = torch.cat([self.features, features[kept_idx]])
        self.candidates.extend(candidates)
        if features.shape[0]:
            dim = features.shape[1]
            prev = self.cand_features if self.cand_features.numel() else torch.zeros(0, dim)
            self.cand_features = torch.cat([prev, features])
            self.cand_kept = torch.cat([self.cand_kept, kept_mask])
        return kept_idx

    def save(self, directory: Path) -> None:
        save_torch(
            directory / "state.pt",
            {
                "round": self.round,
                "pool": self.pool,
                "features": self.features,
                "cand_features": self.cand_features,
                "cand_kept": self.cand_kept,
                "candidates": self.candidates,
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
        self.candidates = raw.get("candidates", [])  # absent from checkpoints of before the control set
        self.seen, self.history, self.tokens = set(raw["seen"]), raw["history"], raw["tokens"]
        set_rng_state(raw["rng"])
