"""Per-token KL estimators between the policy and the reference (SPEC §5; Schulman's k1/k2/k3)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["KL_KINDS", "KLKind", "kl_penalty"]

KLKind = Literal["k1", "k2", "k3"]
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")

_K3_CLAMP = 10.0


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k2") -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from log-probs of tokens sampled from π_θ.

    With d = logp − ref_logp:

    * ``"k1"``: d (unbiased, high variance, can be negative).
    * ``"k2"``: ½ d² (≥ 0; its gradient is the one of the true KL to first order).
    * ``"k3"``: exp(−d) − (−d) − 1 (unbiased, ≥ 0). For stability the log-ratio
      (ref_logp − logp) is clamped to [−10, 10] before the exp, and the result is clamped
      to [−10, 10] (SPEC "clamped to ±10"; the lower bound never binds since k3 ≥ 0).
      So k3 ≤ 10 and its gradient is zero where a clamp is active.

    Args:
        logp: ``[...]`` log π_θ (may require grad).
        ref_logp: ``[...]`` log π_ref, same shape (treated as a constant: detached).
        kind: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        ``[...]`` per-token penalty; mask and aggregate it like the policy loss.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL kind {kind!r}; valid: {', '.join(KL_KINDS)}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"shape mismatch: logp {tuple(logp.shape)} vs ref_logp {tuple(ref_logp.shape)}")
    ref = ref_logp.detach()
    if kind == "k1":
        return logp - ref
    if kind == "k2":
        return 0.5 * (logp - ref).square()
    log_ratio = (ref - logp).clamp(-_K3_CLAMP, _K3_CLAMP)
    return (torch.exp(log_ratio) - log_ratio - 1.0).clamp(-_K3_CLAMP, _K3_CLAMP)
