"""Token entropy (full and top-k), the "forking tokens" mask, and ProRL's entropy-driven
ε_high controller."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["token_entropy", "topk_entropy", "top_entropy_counts", "top_entropy_mask", "EntropyController"]


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy H = −Σ_v p_v log p_v of the softmax over the last dim, from logits.

    Uses ``log_softmax`` (stable for large logits); −inf logits (masked vocabulary) give
    p = 0 and contribute 0. Half-precision inputs are computed in float32.

    Args:
        logits: ``[..., V]``.

    Returns:
        ``[...]`` entropy in nats (float32, or float64 for float64 input); differentiable.
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(x, dim=-1)
    # Clamp −inf log-probs to the most negative finite value: p = 0 there, so the term is
    # (−)0 instead of 0·(−inf) = NaN.
    logp_finite = logp.clamp_min(torch.finfo(logp.dtype).min)
    return -(logp.exp() * logp_finite).sum(dim=-1)


def topk_entropy(logits: Tensor, k: int = 16) -> Tensor:
    """Entropy of the top-k distribution: H = −Σ p̂ log p̂, p̂ = softmax of the k largest logits.

    The Reinforcement Pre-Training paper's filter of easy tokens (SPEC §7): the long tail of
    a large vocabulary adds entropy that says nothing about whether the next token is
    hard. ``k >= V`` gives :func:`token_entropy`.

    Args:
        logits: ``[..., V]``.
        k: how many of the largest logits (>= 1).

    Returns:
        ``[...]`` entropy in nats, at most log k.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= logits.shape[-1]:
        return token_entropy(logits)
    return token_entropy(logits.topk(k, dim=-1).values)


def top_entropy_counts(mask: Tensor, top_q: float) -> Tensor:
    """k_i = ceil(q · n_i): how many tokens :func:`top_entropy_mask` keeps in each row ``[N]``.

    Known from the mask alone, before any entropy: a micro-batched update weighs its parts by it.
    """
    n_valid = mask.bool().sum(dim=1).to(torch.float64)
    # Subtract a hair so q·n that is an integer up to rounding (0.7·10 = 7.000000000000001)
    # is not rounded up to the next one.
    return torch.ceil(n_valid * top_q - 1e-9).to(torch.int64)


def top_entropy_mask(entropy: Tensor, mask: Tensor, top_q: float) -> Tensor:
    """Keep the top-q fraction of highest-entropy valid tokens of EACH response.

    Response i with n_i valid tokens keeps k_i = ceil(q · n_i) tokens (so every non-empty
    response keeps at least one). Ties are broken toward the earlier position, so the
    result is deterministic. ``top_q = 1.0`` returns ``mask`` itself (as bool).

    Args:
        entropy: ``[N, T]`` per-token entropy.
        mask: ``[N, T]`` bool or 0/1 — valid (response) tokens; padding is never selected.
        top_q: fraction in (0, 1] (ProRL "forking tokens": 0.2).

    Returns:
        ``[N, T]`` bool, a subset of ``mask``.
    """
    if entropy.dim() != 2 or entropy.shape != mask.shape:
        raise ValueError(
            f"entropy and mask must both be [N, T], got {tuple(entropy.shape)}, {tuple(mask.shape)}"
        )
    if not 0.0 < top_q <= 1.0:
        raise ValueError(f"top_q must be in (0, 1], got {top_q}")
    valid = mask.bool()
    if top_q == 1.0:
        return valid.clone()
    k = top_entropy_counts(valid, top_q)  # [N]
    # Two stable sorts = lexicographic order (valid first, then entropy descending, then
    # position ascending); works even if a valid entropy equals −inf or the padding value.
    key = torch.where(valid, entropy.detach(), torch.full_like(entropy, -math.inf))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    order = torch.gather(
        order,
        1,
        torch.sort(torch.gather(valid, 1, order).to(torch.int8), dim=1, descending=True, stable=True).indices,
    )
    rank = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank.scatter_(1, order, positions)  # rank[i, t] = place of token t in row i's order
    return valid & (rank < k.unsqueeze(1))


@dataclass
class EntropyController:
    """Keeps a diversity signal in a band by moving ε_high (ProRL's decoupled upper clip).

    The signal is policy token entropy, or any other measure of diversity the caller feeds
    (ProRL can feed distinct answers per group). A larger ε_high lets low-probability tokens
    grow more per step, raising diversity. Each ``update(value)``: value < low → ε_high +=
    step_size; value > high → ε_high −= step_size; inside the band (or non-finite) →
    unchanged. ε_high always stays in [eps_high_min, eps_high_max].

    With ``relative`` the band is [target_low, target_high] times the first positive value
    seen (kept as ``reference``, and checkpointed): "keep at least 90% of the starting
    diversity" needs no guess of the model's absolute entropy, which is why an absolute band
    can sit where the signal never goes and the controller never acts.

    Attributes:
        target_low, target_high: the band (absolute, or fractions of ``reference``).
        eps_high_min, eps_high_max: bounds for ε_high.
        step_size: additive change per update (≥ 0).
        eps_high: current value (initial value; clamped into the bounds). Default 0.4 (ProRL).
        relative: whether the band scales with the first value seen.
        reference: that first value (None until seen; state).
        num_updates: updates applied so far (state, saved with ``state_dict``).
    """

    target_low: float
    target_high: float
    eps_high_min: float
    eps_high_max: float
    step_size: float
    eps_high: float = 0.4
    relative: bool = False
    reference: float | None = None
    num_updates: int = 0

    def __post_init__(self) -> None:
        if self.target_low > self.target_high:
            raise ValueError(f"target_low {self.target_low} > target_high {self.target_high}")
        if not 0.0 <= self.eps_high_min <= self.eps_high_max:
            raise ValueError(
                f"need 0 <= eps_high_min <= eps_high_max, got {self.eps_high_min}, {self.eps_high_max}"
            )
        if self.step_size < 0:
            raise ValueError(f"step_size must be >= 0, got {self.step_size}")
        self.eps_high = self._clamp(self.eps_high)

    def _clamp(self, v: float) -> float:
        return min(max(float(v), self.eps_high_min), self.eps_high_max)

    def band(self) -> tuple[float, float]:
        """The band in the signal's units (a relative band before its first value: unbounded)."""
        if not self.relative:
            return self.target_low, self.target_high
        if self.reference is None:
            return -math.inf, math.inf
        return self.target_low * self.reference, self.target_high * self.reference

    def update(self, value: float) -> float:
        """Apply one step for the measured signal; returns the new ε_high."""
        value = float(value)
        if math.isfinite(value):
            if self.relative and self.reference is None and value > 0:
                self.reference = value  # a band relative to 0 would be [0, 0]: wait for a signal
            low, high = self.band()
            if value < low:
                self.eps_high = self._clamp(self.eps_high + self.step_size)
            elif value > high:
                self.eps_high = self._clamp(self.eps_high - self.step_size)
        self.num_updates += 1
        return self.eps_high

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (the config lives in the stage config, not here)."""
        return {"eps_high": self.eps_high, "num_updates": self.num_updates, "reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``; ε_high is clamped into the current bounds."""
        self.eps_high = self._clamp(state["eps_high"])
        self.num_updates = int(state.get("num_updates", 0))
        self.reference = state.get("reference")
