"""GRPO / Dr.GRPO advantages and DAPO-style dynamic sampling (SPEC §5)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grpo_advantages", "dynamic_sampling_mask"]


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
