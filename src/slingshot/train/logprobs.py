"""Per-token log-probabilities (and entropies) of given tokens under a causal LM, in
micro-batches of bounded size.

Memory: the logits of a forward pass are ``[rows, T, V]``; at real vocabularies (150k)
they dominate everything else, so every pass here runs over at most
``tokens_per_micro_batch`` (rows x padded width) tokens at a time
(:func:`micro_batches`), and within a pass the log-prob of the sampled token comes from
the fused cross-entropy kernel, which keeps one ``[rows, T, V]`` fp32 tensor for the
backward pass (a ``log_softmax`` then ``gather`` keeps more, as does ``logsumexp``). Entropies
are only ever used as detached statistics, so they are computed without gradient, one
row at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from slingshot.algorithms.entropy import token_entropy


def compute_dtype(device: torch.device | str, bf16: bool) -> torch.dtype | None:
    """The autocast dtype of forward passes: bf16 on GPUs when asked, None (fp32) on CPU."""
    return torch.bfloat16 if bf16 and torch.device(device).type == "cuda" else None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def micro_batch_rows(rows: int, width: int, tokens_per_micro_batch: int, max_rows: int | None = None) -> int:
    """Rows per forward pass: as many ``width``-token rows as fit the budget (at least one)."""
    fit = max(1, tokens_per_micro_batch // max(width, 1))
    return max(1, min(rows, fit, max_rows or rows))


def micro_batches(
    rows: int, width: int, tokens_per_micro_batch: int, max_rows: int | None = None
) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` row ranges covering ``rows`` rows in micro-batches of the budget."""
    size = micro_batch_rows(rows, width, tokens_per_micro_batch, max_rows)
    for start in range(0, rows, size):
        yield start, min(start + size, rows)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    with_entropy: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for t in [0, T-1), shape [N, T-1], fp32.

    One forward pass (the caller bounds its size). Entropy of the predictive distribution
    at the same positions when asked (for entropy control and forking-token masks),
    always detached. Gradients flow into the log-probs unless under no_grad. ``dtype``:
    the autocast dtype of the forward (None: the model's own).
    """
    with autocast(input_ids.device, dtype):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits.float()  # a no-op in fp32; in bf16 the one fp32 copy
    # Column T-1 predicts nothing: its target is ignored (and dropped) rather than slicing
    # the logits, which would copy them.
    targets = torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=-100)
    if torch.is_grad_enabled():
        logp = -_fused_logprobs(logits, targets)
    else:  # one row at a time: no [rows, T, V] temporary beside the logits
        logp = -torch.cat(
            [
                _fused_logprobs(row, row_targets)
                for row, row_targets in zip(logits.split(1), targets.split(1), strict=True)
            ]
        )
    logp = logp[:, :-1]
    logits = logits[:, :-1]
    entropy = None
    if with_entropy:
        with torch.no_grad():  # a statistic: no graph, and one row's temporaries at a time
            entropy = torch.cat([token_entropy(row) for row in logits.detach().split(1)])
    return logp, entropy


def _fused_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position of ``[rows, T, V]`` logits: the fused log-softmax + gather,
    the form that keeps the fewest ``[rows, T, V]`` tensors through a backward pass (measured)."""
    flat = torch.nn.functional.cross_entropy(
        logits.view(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return flat.view(targets.shape)


def _pad_columns(values: torch.Tensor, width: int) -> torch.Tensor:
    if values.shape[1] == width:
        return values
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


@torch.no_grad()
def batched_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    with_entropy: bool = False,
    tokens_per_micro_batch: int = 16384,
    max_rows: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`token_logprobs` of a whole batch without gradient, in micro-batches of at most
    ``tokens_per_micro_batch`` tokens (and ``max_rows`` rows), each trimmed to its longest
    row; returns ``[N, T-1]`` tensors on the inputs' device (0 past each row's end)."""
    n, width = input_ids.shape
    logp_parts: list[torch.Tensor] = []
    entropy_parts: list[torch.Tensor] = []
    for start, stop in micro_batches(n, width, tokens_per_micro_batch, max_rows):
        used = max(int(attention_mask[start:stop].sum(dim=1).max()), 2)
        positions = position_ids[start:stop, :used] if position_ids is not None else None
        logp, entropy = token_logprobs(
            model,
            input_ids[start:stop, :used],
            attention_mask[start:stop, :used],
            positions,
            with_entropy,
            dtype,
        )
        logp_parts.append(_pad_columns(logp, width - 1))
        if entropy is not None:
            entropy_parts.append(_pad_columns(entropy, width - 1))
    return torch.cat(logp_parts), torch.cat(entropy_parts) if with_entropy else None
