"""HF generate as a rollout backend: the training model itself samples, so weights are
always in sync. Prompts are left-padded into one batch per call; a call seeded per prompt
generates each prompt's ``n`` samples as a batch of their own under that prompt's seed, so
they do not depend on the other prompts (nor on how a sharded stage split them over ranks).
A policy sharded with FSDP2 is gathered for each call (:func:`gathered_for_generation`)."""

from __future__ import annotations

import torch

from slingshot.models.sharding import gathered_for_generation
from slingshot.rollout.base import Rollout, Seeds, per_prompt_seeds


class HFRollout:
    def __init__(
        self, model: torch.nn.Module, pad_token_id: int, stop_token_ids: list[int], batch_size: int = 64
    ):
        self.model = model
        self.pad_token_id = pad_token_id
        self.stop_token_ids = list(stop_token_ids)
        self.batch_size = batch_size
        self.weight_version = 0  # sync_weights calls so far, as the vLLM backend counts them

    def close(self) -> None:
        """Nothing to release: the training model itself generates."""

    def sync_weights(self, model: torch.nn.Module, step: int | None = None) -> None:
        self.model = model  # the same module object: nothing to copy
        self.weight_version += 1

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seed: Seeds = None,
    ) -> list[list[Rollout]]:
        # A sharded (FSDP2) policy is gathered once for the whole call: ranks stop at
        # different lengths, so no forward inside may be a collective.
        with gathered_for_generation(self.model):
            seeds = per_prompt_seeds(seed, len(prompts))
            if seeds is None:
                return self._generate(prompts, n, max_new_tokens, temperature, top_p, seed)
            return [
                self._generate([p], n, max_new_tokens, temperature, top_p, s)[0]
                for p, s in zip(prompts, seeds, strict=True)
            ]

    def _generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> list[list[Rollout]]:
        if seed is not None:
            torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        flat = [p for p in prompts for _ in range(n)]
        results: list[Rollout] = []
        try:
            for start in range(0, len(flat), self.batch_size):
                results += self._batch(
                    flat[start : start + self.batch_size], max_new_tokens, temperature, top_p
                )
        finally:
            self.model.train(was_training)
        return [results[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _batch(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float
    ) -> list[Rollout]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False}
        )
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            top_k=0,
            **sampling,
        )
        rollouts = []
        stops = set(self.stop_token_ids)
        for i, p in enumerate(prompts):
            completion: list[int] = []
            finished = False
            for token in out[i, width:].tolist():
                completion.append(token)
                if token in stops:
                    finished = True
                    break
            rollouts.append(
                Rollout(
                    prompt_ids=list(p),
                    completion_ids=completion,
                    finished=finished,
                    weight_version=self.weight_version,
                )
            )
        return rollouts
