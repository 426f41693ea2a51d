"""Per-token log-probabilities (and entropies) of given tokens under a causal LM."""

from __future__ import annotations

import torch

from slingshot.algorithms.entropy import token_entropy


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for t in [0, T-1), shape [N, T-1].

    Entropy of the predictive distribution at the same positions when asked (for
    entropy control and forking-token masks). Gradients flow unless under no_grad.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, :-1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, 1:].unsqueeze(-1)
    logp = torch.gather(logp_all, -1, targets).squeeze(-1)
    entropy = None
    if with_entropy:
        entropy = token_entropy(logits)
    return logp, entropy
