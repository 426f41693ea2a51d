"""Log-probabilities at a sampling temperature (SPEC §7)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "tempered_logprobs"]

IGNORE_INDEX = -100  # a target that scores nothing: its log-prob is 0


def tempered_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) gathered at ``targets``.

    Tokens sampled at temperature T come from softmax(logits / T): that is the policy whose
    log-probs belong in an importance ratio. T = 1 gives the model's own log-probs (RLP's
    S_pred and no-thought baseline). Computed with the fused cross-entropy kernel, so only
    one ``[..., V]`` temporary lives beside the logits; targets equal to ``IGNORE_INDEX``
    get 0. Differentiable in ``logits``.

    Args:
        logits: ``[..., V]``.
        targets: ``[...]`` long token ids (or ``IGNORE_INDEX``).
        temperature: > 0.

    Returns:
        ``[...]`` log-probs, in the logits' dtype (float32 for half precision).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match")
    x = logits if logits.dtype == torch.float64 else logits.float()
    if temperature != 1.0:
        x = x / temperature
    flat = torch.nn.functional.cross_entropy(
        x.reshape(-1, x.shape[-1]), targets.reshape(-1), reduction="none", ignore_index=IGNORE_INDEX
    )
    return -flat.view(targets.shape)
