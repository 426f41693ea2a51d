"""RLP — reinforcement as a pretraining objective (SPEC §2): reward, advantages, EMA teacher."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["information_gain_reward", "rlp_group_advantages", "ema_update_", "parameter_distance"]


def information_gain_reward(
    logp_with_thought: Tensor,
    logp_no_thought_ema: Tensor,
    *,
    multi_token: bool = False,
) -> Tensor:
    """Information-gain reward of each thought: S_pred − S_ema.

    S_pred = log p_θ(x_t | x_<t, c) (current policy, with the thought) and
    S_ema = log p_φ(x_t | x_<t) (EMA teacher, no thought). Both are detached: no gradient
    ever flows through the reward.

    Args:
        logp_with_thought: S_pred, any shape ``[...]`` (e.g. ``[B, G]``), or ``[..., k]`` with
            ``multi_token=True`` for a k-token target.
        logp_no_thought_ema: S_ema, same shape (S_ema does not depend on the thought; expand
            a ``[B, 1]`` baseline to ``[B, G]`` before calling).
        multi_token: the last dim holds the k target tokens; the per-token gains are
            averaged over it (SPEC: "multi-token targets average the per-token gains").

    Returns:
        ``[...]`` reward per thought (the last dim removed when ``multi_token``).
    """
    if logp_with_thought.shape != logp_no_thought_ema.shape:
        raise ValueError(
            f"shape mismatch: logp_with_thought {tuple(logp_with_thought.shape)} vs "
            f"logp_no_thought_ema {tuple(logp_no_thought_ema.shape)}"
        )
    gain = logp_with_thought.detach() - logp_no_thought_ema.detach()
    if multi_token:
        if gain.dim() == 0 or gain.shape[-1] == 0:
            raise ValueError("multi_token=True needs a non-empty last dim of k target tokens")
        gain = gain.mean(dim=-1)
    return gain


def rlp_group_advantages(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """Group-relative advantages without std scaling: G/(G−1) · (r − mean_G(r)).

    This is the leave-one-out baseline: r_i − mean_{j≠i} r_j. Each group's advantages sum
    to zero.

    Args:
        rewards: ``[B, G]``, G ≥ 2 thoughts per position.
        valid: optional ``[B, G]`` bool: only these thoughts form the group (e.g. closed
            thoughts). G becomes each group's count n of valid thoughts,
            n/(n−1) · (r − mean_valid(r)) for a valid thought; an excluded thought, and
            every thought of a group with n < 2 (no baseline), gets 0.

    Returns:
        ``[B, G]`` advantages (float; detached).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    g = rewards.shape[1]
    if g < 2:
        raise ValueError(f"RLP advantages need a group size G >= 2 (G/(G-1) is undefined), got G={g}")
    r = rewards.detach()
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    if valid is None:
        return (g / (g - 1)) * (r - r.mean(dim=1, keepdim=True))
    if valid.shape != rewards.shape:
        raise ValueError(f"valid {tuple(valid.shape)} must have the shape of rewards {tuple(rewards.shape)}")
    m = valid.to(r.dtype)
    n = m.sum(dim=1, keepdim=True)
    mean = (r * m).sum(dim=1, keepdim=True) / n.clamp(min=1)
    scale = torch.where(n >= 2, n / (n - 1).clamp(min=1), torch.zeros_like(n))
    return scale * (r - mean) * m


def _as_list(params: Iterable[Tensor]) -> list[Tensor]:
    out = []
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected tensors, got {type(p).__name__}")
        out.append(p.detach())  # same storage: in-place updates reach the original
    return out


@torch.no_grad()
def ema_update_(ema_params: Iterable[Tensor], params: Iterable[Tensor], tau: float) -> None:
    """In place: φ ← τ φ + (1 − τ) θ for each (φ, θ) pair.

    Computed as two fused multi-tensor ops (``torch._foreach_mul_`` then
    ``torch._foreach_add_`` with alpha = 1 − τ), i.e. exactly τ·φ + (1−τ)·θ per element
    (rather than lerp, whose rounding differs). θ is cast to φ's dtype/device if needed
    (e.g. an fp32 teacher of a bf16 policy).

    Args:
        ema_params: the teacher's tensors φ (modified in place), e.g. ``ema_model.parameters()``.
        params: the policy's tensors θ, same order and shapes.
        tau: decay in [0, 1] (SPEC default 0.999).
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    ema = _as_list(ema_params)
    src = _as_list(params)
    if len(ema) != len(src):
        raise ValueError(f"ema_params has {len(ema)} tensors but params has {len(src)}")
    for i, (e, p) in enumerate(zip(ema, src, strict=True)):
        if e.shape != p.shape:
            raise ValueError(f"tensor {i}: ema shape {tuple(e.shape)} != param shape {tuple(p.shape)}")
    if not ema:
        return
    src = [
        p if (p.dtype == e.dtype and p.device == e.device) else p.to(e) for e, p in zip(ema, src, strict=True)
    ]
    torch._foreach_mul_(ema, tau)
    torch._foreach_add_(ema, src, alpha=1.0 - tau)


@torch.no_grad()
def parameter_distance(a_params: Iterable[Tensor], b_params: Iterable[Tensor]) -> Tensor:
    """‖a − b‖₂ over all tensors jointly (the EMA-vs-policy distance logged by RLP).

    Args:
        a_params, b_params: tensors of matching shapes, in the same order.

    Returns:
        0-d float32 tensor (float64 if the inputs are float64) on the first tensor's device;
        call ``.item()`` to log it. Kept as a tensor so it causes no device sync by itself.
    """
    a = _as_list(a_params)
    b = _as_list(b_params)
    if len(a) != len(b):
        raise ValueError(f"a_params has {len(a)} tensors but b_params has {len(b)}")
    if not a:
        return torch.zeros(())
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape:
            raise ValueError(f"tensor {i}: shape {tuple(x.shape)} != {tuple(y.shape)}")
    acc = torch.float64 if all(x.dtype == torch.float64 for x in a) else torch.float32
    # Upcast so bf16 parameters do not lose the (small) EMA differences.
    a = [x.to(acc) for x in a]
    b = [y.to(device=x.device, dtype=acc) for x, y in zip(a, b, strict=True)]
    diffs = torch._foreach_sub(a, b)
    norms = torch._foreach_norm(diffs)
    dev = a[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(dev) for n in norms]))
