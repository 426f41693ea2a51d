"""GRPO / Dr.GRPO and REINFORCE++-baseline advantages, DAPO-style dynamic sampling (SPEC §5, §7)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grpo_advantages", "reinforce_pp_baseline_advantages", "dynamic_sampling_mask"]


def _check_groups(rewards: Tensor) -> Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    r = rewards.detach()
    return r if r.is_floating_point() else r.to(torch.get_default_dtype())


def grpo_advantages(rewards: Tensor, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages: (r − mean_G) / (std_G + eps), or r − mean_G (Dr.GRPO).

    The std is the UNBIASED sample std (``torch.std`` default, Bessel-corrected, divisor
    G − 1), as TRL and verl compute it. A group whose rewards are all equal gets
    advantage 0 (0 / (0 + eps)).

    Args:
        rewards: ``[B, G]`` scalar rewards, G samples per prompt (bool/int are cast to float).
        normalize_std: divide by the group std; False gives Dr.GRPO's r − mean.
        eps: added to the std.

    Returns:
        ``[B, G]`` advantages (detached).
    """
    r = _check_groups(rewards)
    centered = r - r.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centered
    if r.shape[1] < 2:
        raise ValueError(f"std normalisation needs G >= 2 samples per group, got G={r.shape[1]}")
    return centered / (r.std(dim=1, keepdim=True) + eps)


def reinforce_pp_baseline_advantages(
    rewards: Tensor, eps: float = 1e-6, lengths: Tensor | None = None
) -> Tensor:
    """REINFORCE++-baseline (ProRL v2): A = r − mean_G(r), then (A − mean(A)) / (std(A) + eps)
    over the whole batch.

    The group mean removes each prompt's difficulty; the batch normalisation (instead of
    GRPO's per-group std) keeps a group of near-equal rewards from getting advantages as
    large as a group of very different ones. The batch mean and std are over all B·G
    entries, the std biased (divisor B·G). ``lengths`` weights each response by its token
    count in that mean and std (NeMo-RL's token-level normalisation).

    Args:
        rewards: ``[B, G]``.
        eps: added to the batch std.
        lengths: optional ``[B, G]`` token counts (weights, >= 0, not all 0).

    Returns:
        ``[B, G]`` advantages (detached).
    """
    r = _check_groups(rewards)
    centered = r - r.mean(dim=1, keepdim=True)
    if lengths is None:
        weights = torch.ones_like(centered)
    else:
        if lengths.shape != r.shape:
            raise ValueError(f"lengths {tuple(lengths.shape)} must match rewards {tuple(r.shape)}")
        weights = lengths.detach().to(centered.dtype)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("lengths must be >= 0 and not all 0")
    mean = (weights * centered).sum() / weights.sum()
    std = ((weights * (centered - mean) ** 2).sum() / weights.sum()).sqrt()
    return (centered - mean) / (std + eps)


def dynamic_sampling_mask(rewards: Tensor) -> Tensor:
    """Which groups to keep: True where the group's rewards are NOT all equal.

    Groups that are all solved or all failed have zero advantage and no learning signal.
    Comparison is exact (rewards from verifiers are discrete).

    Args:
        rewards: ``[B, G]``.

    Returns:
        ``[B]`` bool, True = keep.
    """
    r = _check_groups(rewards)
    if r.shape[1] == 0:
        return torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    return (r != r[:, :1]).any(dim=1)
