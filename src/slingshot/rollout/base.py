"""The rollout interface the RL stages, synthesis and evaluation generate through."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]  # without padding; ends with the stop token when finished
    finished: bool  # stopped on a stop token before max_new_tokens (False = truncated)
    # The sampled tokens' log-probs under the sampling weights, at the sampling temperature;
    # None where the backend does not return them (HF generate).
    logprobs: list[float] | None = None
    weight_version: int = 0  # weight pushes (sync_weights) before this rollout was sampled


Seeds = int | Sequence[int] | None  # one seed for a generate call, or one per prompt


def per_prompt_seeds(seed: Seeds, n_prompts: int) -> list[int] | None:
    """The seeds of a call seeded per prompt; None for one seed per call (or none)."""
    if seed is None or isinstance(seed, int):
        return None
    seeds = [int(s) for s in seed]
    if len(seeds) != n_prompts:
        raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
    return seeds


class RolloutBackend(Protocol):
    weight_version: int  # sync_weights calls so far

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: Seeds = None,
    ) -> list[list[Rollout]]:
        """``n`` samples for each prompt (token ids), grouped per prompt. ``seed``: one for the
        call, or one per prompt (a prompt's samples then depend on its seed alone, not on
        what else is in the call: how sharded stages draw the same samples on any world size)."""
        ...

    def sync_weights(self, model: torch.nn.Module, step: int | None = None) -> None:
        """Make generation use ``model``'s current weights (after optimizer step ``step``)."""
        ...

    def close(self) -> None:
        """Release the engine (its process, its temp files); the stage calls it when it ends."""
        ...


class EngineWeights:
    """The engine's weights as a checkpointed part: its version is saved, and loading pushes
    the policy's weights, so a resumed run samples from the resumed policy (an engine starts
    with the weights the stage loaded before the checkpoint) and stamps the same versions.

    List it after the policy among a ``TrainState``'s parts: they load in order."""

    def __init__(self, backend: RolloutBackend, policy: torch.nn.Module):
        self.backend, self.policy = backend, policy

    def state_dict(self) -> dict[str, Any]:
        return {"weight_version": self.backend.weight_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.backend.sync_weights(self.policy)
        self.backend.weight_version = int(state["weight_version"])
