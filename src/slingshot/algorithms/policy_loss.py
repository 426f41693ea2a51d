"""The clipped (PPO-style) policy-gradient loss shared by RLP and ProRL (SPEC §2, §5)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "ISMode",
    "PolicyLossOutput",
    "behaviour_importance_weights",
    "clipped_policy_loss",
]

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
ISMode = Literal["mask", "truncate"]
AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")

_LOG_RATIO_CLAMP = 20.0  # SPEC: the log-ratio is clamped to ±20 before exp (no inf ratios)


class PolicyLossOutput(NamedTuple):
    """Result of ``clipped_policy_loss``; every field is a 0-d tensor.

    Attributes:
        loss: the aggregated loss (differentiable w.r.t. ``logp``).
        clip_frac: fraction of valid tokens whose clipped branch is active
            (= clip_frac_low + clip_frac_high; the two events are disjoint).
        clip_frac_low: fraction of valid tokens with A < 0 and ρ < 1 − ε_low.
        clip_frac_high: fraction of valid tokens with A > 0 and ρ > 1 + ε_high.
        ratio_mean: mean of ρ over valid tokens.
    The four metrics are detached.
    """

    loss: Tensor
    clip_frac: Tensor
    clip_frac_low: Tensor
    clip_frac_high: Tensor
    ratio_mean: Tensor


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    agg: Aggregation = "token-mean",
    token_weights: Tensor | None = None,
) -> PolicyLossOutput:
    """Decoupled-clip policy loss: per token max(−A ρ, −A clip(ρ, 1−ε_low, 1+ε_high)).

    ρ = exp(clamp(logp − old_logp, −20, 20)). Only tokens with ``mask`` true count; masked
    positions may hold any value (even inf/NaN) and get zero loss and zero gradient.

    Aggregations (n_i = valid tokens of sequence i, ℓ_it = per-token loss):

    * ``"token-mean"``: Σ_{i,t} ℓ_it / Σ_i n_i — every valid token of the batch weighs the same.
    * ``"seq-mean-token-mean"``: mean over sequences of (Σ_t ℓ_it / n_i) — the RLP loss.
    * ``"seq-mean-token-sum"``: mean over sequences of Σ_t ℓ_it (Dr.GRPO-style).

    In both seq-mean modes, sequences with n_i = 0 (padding rows) are excluded from the
    mean. With no valid token at all the loss is 0 (still connected to the graph).

    Clip events, which are exactly where the clipped branch of the max is the larger one:
    "high" = A > 0 and ρ > 1 + ε_high; "low" = A < 0 and ρ < 1 − ε_low.

    Args:
        logp: ``[N, T]`` log π_θ of the sampled tokens (requires grad).
        old_logp: ``[N, T]`` log π_θold at sampling time.
        adv: advantages, ``[N]`` (one per sequence) or ``[N, T]`` (per token); detached here.
        mask: ``[N, T]`` bool or 0/1 — valid (e.g. response/thought) tokens.
        eps_low: lower clip ε_low ∈ [0, 1].
        eps_high: upper clip ε_high ≥ 0.
        agg: one of ``AGGREGATIONS``.
        token_weights: optional ``[N, T]`` detached weight of each token's loss term (the
            behaviour-policy importance weights of :func:`behaviour_importance_weights`);
            the aggregation's denominators (token counts) are unchanged.

    Returns:
        ``PolicyLossOutput`` (loss, clip_frac, clip_frac_low, clip_frac_high, ratio_mean).
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown agg {agg!r}; valid: {', '.join(AGGREGATIONS)}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, T], got shape {tuple(logp.shape)}")
    if old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask {tuple(mask.shape)} must match"
        )
    if adv.shape == logp.shape[:1]:
        adv = adv.unsqueeze(1)
    elif adv.shape != logp.shape:
        raise ValueError(f"advantages must be [N] or [N, T], got {tuple(adv.shape)}")
    if not 0.0 <= eps_low <= 1.0 or eps_high < 0.0:
        raise ValueError(f"need 0 <= eps_low <= 1 and eps_high >= 0, got {eps_low}, {eps_high}")

    valid = mask.bool()
    adv = adv.detach().to(logp.dtype)
    # Zero the log-ratio on padding first so garbage there cannot produce NaN gradients.
    log_ratio = torch.where(valid, logp - old_logp.detach(), torch.zeros_like(logp))
    ratio = torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        if token_weights.shape != logp.shape:
            raise ValueError(
                f"token_weights {tuple(token_weights.shape)} must match logp {tuple(logp.shape)}"
            )
        per_token = per_token * token_weights.detach().to(logp.dtype)
    per_token = torch.where(valid, per_token, torch.zeros_like(logp))

    n_valid_seq = valid.sum(dim=1)  # [N]
    n_valid = n_valid_seq.sum()
    if agg == "token-mean":
        loss = per_token.sum() / n_valid.clamp_min(1)
    else:
        seq_sum = per_token.sum(dim=1)
        has_tokens = n_valid_seq > 0
        seq_loss = seq_sum / n_valid_seq.clamp_min(1) if agg == "seq-mean-token-mean" else seq_sum
        # Rows with no valid token contribute exactly 0 to the sum and are not counted.
        loss = torch.where(
            has_tokens, seq_loss, torch.zeros_like(seq_loss)
        ).sum() / has_tokens.sum().clamp_min(1)

    with torch.no_grad():
        r = ratio.detach()
        a = adv.expand_as(r)
        low = valid & (a < 0) & (r < 1.0 - eps_low)
        high = valid & (a > 0) & (r > 1.0 + eps_high)
        denom = n_valid.clamp_min(1).to(logp.dtype)
        frac_low = low.sum().to(logp.dtype) / denom
        frac_high = high.sum().to(logp.dtype) / denom
        ratio_mean = torch.where(valid, r, torch.zeros_like(r)).sum() / denom
    return PolicyLossOutput(loss, frac_low + frac_high, frac_low, frac_high, ratio_mean)


def behaviour_importance_weights(
    logp_old: Tensor,
    logp_behaviour: Tensor,
    low: float = 0.5,
    high: float = 5.0,
    mode: ISMode = "mask",
) -> Tensor:
    """Per-token importance weights of the trainer's θ_old over the behaviour policy that
    sampled the tokens (an engine a weight version behind, or numerically different).

    ρ_b = exp(logp_old − logp_behaviour) (log-ratio clamped to ±20). ``"mask"`` (ICE-POP,
    ProRL v2's [0.5, 5]): ρ_b where low ≤ ρ_b ≤ high, else 0 — a token the two policies
    disagree on that much is dropped; ``"truncate"`` (TIS): min(ρ_b, high). Detached: a
    correction of the sampling distribution, not something to optimise.

    Args:
        logp_old: ``[N, T]`` the trainer's log-probs of the sampled tokens (θ_old).
        logp_behaviour: ``[N, T]`` the generation engine's.
        low, high: the bounds, 0 <= low <= 1 <= high.
        mode: "mask" or "truncate".

    Returns:
        ``[N, T]`` weights >= 0.
    """
    if logp_old.shape != logp_behaviour.shape:
        raise ValueError(
            f"logp_old {tuple(logp_old.shape)} and logp_behaviour {tuple(logp_behaviour.shape)} differ"
        )
    if not 0.0 <= low <= 1.0 <= high:
        raise ValueError(f"need 0 <= low <= 1 <= high, got {low}, {high}")
    log_ratio = (logp_old.detach() - logp_behaviour.detach()).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    if mode == "mask":
        return torch.where((ratio >= low) & (ratio <= high), ratio, torch.zeros_like(ratio))
    if mode == "truncate":
        return ratio.clamp(max=high)
    raise ValueError(f"unknown mode {mode!r}; valid: mask, truncate")
