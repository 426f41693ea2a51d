"""Rollouts as training tensors, shared by the RL stages.

A rollout is a prompt plus a sampled completion. Training needs them as one right-padded
batch whose per-token log-probabilities line up with a mask of the completion tokens:
``token_logprobs`` returns ``[N, T-1]`` where column t scores token t+1, so the response
mask is built in that shifted frame here, once, instead of in every stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class RLBatch:
    """Right-padded prompt+completion rows; ``response_mask`` is in the log-prob frame [N, T-1]."""

    input_ids: torch.Tensor  # [N, T] long
    attention_mask: torch.Tensor  # [N, T] long, 1 on real tokens
    position_ids: torch.Tensor  # [N, T] long
    response_mask: torch.Tensor  # [N, T-1] bool: column t is True when token t+1 is a completion token
    prompt_lengths: torch.Tensor  # [N] long
    response_lengths: torch.Tensor  # [N] long
    # [N, T-1] float in the log-prob frame: the sampled tokens' log-probs under the engine's
    # weights (one-step-async ProRL's behaviour policy); None when the trainer computes θ_old.
    behaviour_logprobs: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: torch.Tensor | slice) -> RLBatch:
        """A sub-batch (e.g. a mini-batch), trimmed to its own longest row to save compute."""
        ids = self.input_ids[index]
        attention = self.attention_mask[index]
        width = max(int(attention.sum(dim=1).max()), 2) if ids.shape[0] else 2
        return RLBatch(
            input_ids=ids[:, :width],
            attention_mask=attention[:, :width],
            position_ids=self.position_ids[index][:, :width],
            response_mask=self.response_mask[index][:, : width - 1],
            prompt_lengths=self.prompt_lengths[index],
            response_lengths=self.response_lengths[index],
            behaviour_logprobs=(
                None if self.behaviour_logprobs is None else self.behaviour_logprobs[index][:, : width - 1]
            ),
        )

    def to(self, device: torch.device | str) -> RLBatch:
        return RLBatch(
            *(
                t.to(device)
                for t in (self.input_ids, self.attention_mask, self.position_ids, self.response_mask)
            ),
            self.prompt_lengths,
            self.response_lengths,
            None if self.behaviour_logprobs is None else self.behaviour_logprobs.to(device),
        )


def build_rl_batch(
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_token_id: int,
    behaviour_logprobs: Sequence[Sequence[float]] | None = None,
) -> RLBatch:
    """One batch from (prompt_ids, completion_ids) pairs, right-padded to the longest row;
    ``behaviour_logprobs``: each completion's sampled-token log-probs, in the same frame.

    Right padding keeps every row's positions at 0..len-1 with no offset bookkeeping, and
    causal attention never lets a real token see the padding after it. An empty
    completion yields a row with no response token (it contributes nothing to losses).
    """
    if not sequences:
        raise ValueError("build_rl_batch needs at least one sequence")
    lengths = [len(p) + len(c) for p, c in sequences]
    width = max(max(lengths), 2)
    n = len(sequences)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width - 1), dtype=torch.bool)
    prompt_lengths = torch.zeros(n, dtype=torch.long)
    response_lengths = torch.zeros(n, dtype=torch.long)
    behaviour = None if behaviour_logprobs is None else torch.zeros((n, width - 1), dtype=torch.float32)
    for i, (prompt, completion) in enumerate(sequences):
        if not prompt:
            raise ValueError(f"row {i}: empty prompt (the first completion token needs a context)")
        row = list(prompt) + list(completion)
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
        # Token j (j >= len(prompt)) is predicted at log-prob column j - 1.
        response[i, len(prompt) - 1 : len(row) - 1] = True
        prompt_lengths[i] = len(prompt)
        response_lengths[i] = len(completion)
        if behaviour is not None:
            assert behaviour_logprobs is not None
            if len(behaviour_logprobs[i]) != len(completion):
                raise ValueError(
                    f"row {i}: {len(behaviour_logprobs[i])} behaviour log-probs for {len(completion)} tokens"
                )
            behaviour[i, len(prompt) - 1 : len(row) - 1] = torch.tensor(behaviour_logprobs[i])
    positions = torch.arange(width, dtype=torch.long).expand(n, width).clone()
    return RLBatch(input_ids, attention, positions, response, prompt_lengths, response_lengths, behaviour)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (0 when the mask is empty); padding may hold anything."""
    valid = mask.bool()
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp_min(1).to(values.dtype)
