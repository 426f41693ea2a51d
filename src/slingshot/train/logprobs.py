"""Per-token log-probabilities (and entropies) of given tokens under a causal LM, in
micro-batches of bounded size.

Memory: the logits of a forward pass are ``[rows, T, V]``; at real vocabularies (150k)
they dominate everything else, so every pass here is bounded twice (:class:`PassSettings`):

* rows: at most ``tokens_per_micro_batch`` tokens (rows x padded width) per forward pass
  (:func:`micro_batches`);
* logits: with ``logits_chunk_tokens`` the output layer runs over that many tokens at a
  time, each chunk checkpointed (recomputed in the backward pass), so the logits of at
  most one chunk are ever alive, even for a single 16k-token row.

Within a pass the log-prob of the sampled token comes from the fused cross-entropy
kernel over the unsliced logits, which keeps one ``[tokens, V]`` fp32 tensor for the
backward pass (``log_softmax`` then ``gather`` keeps more, as does ``logsumexp``; slicing
the logits copies them). Without gradient it runs ``PIECE_TOKENS`` positions at a time. Entropies are only
ever detached statistics: computed without gradient, ``PIECE_TOKENS`` positions at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

from slingshot import dist
from slingshot.algorithms.entropy import token_entropy, topk_entropy
from slingshot.algorithms.logprobs import IGNORE_INDEX, tempered_logprobs

if TYPE_CHECKING:
    from slingshot.config import MemoryConfig

IGNORE = IGNORE_INDEX
PIECE_TOKENS = 256  # no-grad log-probs and entropies: [256, V] temporaries at a time
# Config keys of models whose logits are not plain lm_head(hidden): the chunked path would skip them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class PassSettings:
    """How big one forward pass may be, and its precision."""

    tokens_per_micro_batch: int = 16384
    logits_chunk_tokens: int | None = None  # None: the output layer over the whole micro-batch
    bf16: bool = False  # bf16 autocast (GPUs only: see compute_dtype)
    # The log-probs are of softmax(logits / temperature): the distribution the tokens were
    # sampled from (SPEC §7). Entropies stay those of the model itself (T = 1).
    temperature: float = 1.0
    entropy_top_k: int | None = None  # entropies of the top-k distribution (None: the full one)

    @classmethod
    def from_memory(cls, memory: MemoryConfig) -> PassSettings:
        return cls(memory.logprob_tokens_per_micro_batch, memory.logits_chunk_tokens, memory.bf16)


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


def lockstep_width(width: int) -> int:
    """The widest rank's ``width`` (``width`` itself in one process; a collective otherwise:
    every rank calls it at the same point). Micro-batches sized for it are as many on every
    rank that holds as many rows, as a sharded (FSDP2) model needs: each of its forward
    passes all-gathers, so the ranks must run the same number of them."""
    return int(dist.all_reduce_scalar(float(width), "max"))


def micro_batches(
    rows: int, width: int, tokens_per_micro_batch: int, max_rows: int | None = None
) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` row ranges covering ``rows`` rows in micro-batches of the budget."""
    size = micro_batch_rows(rows, width, tokens_per_micro_batch, max_rows)
    for start in range(0, rows, size):
        yield start, min(start + size, rows)


def _logits_stats(
    logits: torch.Tensor,
    targets: torch.Tensor,
    with_entropy: bool,
    passes: PassSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs at ``passes.temperature`` (with gradient when enabled) and detached entropies
    (top ``passes.entropy_top_k`` when set) of ``[rows, T, V]`` logits."""
    temperature, entropy_top_k = passes.temperature, passes.entropy_top_k
    logits = logits.float()  # a no-op in fp32; in bf16 the one fp32 copy
    if torch.is_grad_enabled():
        logp = tempered_logprobs(logits, targets, temperature)
    else:  # PIECE_TOKENS at a time: no [rows, T, V] temporary beside the logits
        flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        pairs = zip(flat.split(PIECE_TOKENS), flat_targets.split(PIECE_TOKENS), strict=True)
        logp = torch.cat(
            [tempered_logprobs(piece, piece_targets, temperature) for piece, piece_targets in pairs]
        )
        logp = logp.view(targets.shape)
    entropy = None
    if with_entropy:
        with torch.no_grad():  # a statistic: no graph, and PIECE_TOKENS' temporaries at a time
            flat = logits.detach().reshape(-1, logits.shape[-1])
            pieces = flat.split(PIECE_TOKENS)
            if entropy_top_k is None:
                entropy = torch.cat([token_entropy(piece) for piece in pieces])
            else:
                entropy = torch.cat([topk_entropy(piece, entropy_top_k) for piece in pieces])
            entropy = entropy.view(targets.shape)
    return logp, entropy


def _head_chunk(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype | None,
    with_entropy: bool,
    passes: PassSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    with autocast(hidden.device, dtype):
        logits = head(hidden)
    logp, entropy = _logits_stats(logits, targets, with_entropy, passes)
    return logp, entropy if entropy is not None else torch.empty(0)


def _chunked(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor | None],
    targets: torch.Tensor,
    with_entropy: bool,
    dtype: torch.dtype | None,
    chunk_tokens: int,
    passes: PassSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoder once, then the output layer over ``chunk_tokens`` tokens at a time, each
    chunk checkpointed so its logits are recomputed in the backward pass, not kept."""
    transforms = [key for key in _LOGIT_TRANSFORMS if getattr(model.config, key, None) not in (None, 1.0)]
    if transforms:
        raise ValueError(
            f"memory.logits_chunk_tokens: the model transforms its logits ({', '.join(transforms)}); "
            "unset logits_chunk_tokens for it"
        )
    with autocast(targets.device, dtype):
        hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    step = max(1, chunk_tokens // targets.shape[0])  # positions per chunk, over all rows
    logps, entropies = [], []
    for start in range(0, targets.shape[1], step):
        args = (
            head,
            hidden[:, start : start + step],
            targets[:, start : start + step],
            dtype,
            with_entropy,
            passes,
        )
        if torch.is_grad_enabled():
            logp, entropy = checkpoint(_head_chunk, *args, use_reentrant=False)
        else:
            logp, entropy = _head_chunk(*args)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1) if with_entropy else None


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    with_entropy: bool = False,
    passes: PassSettings | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for t in [0, T-1), shape [N, T-1], fp32.

    One forward pass (the caller bounds its rows). Entropy of the predictive distribution
    at the same positions when asked (for entropy control and forking-token masks),
    always detached. Gradients flow into the log-probs unless under no_grad. ``passes``:
    the precision, the logits chunking, the temperature of the log-probs and the entropies'
    top-k (the default: fp32, unchunked, T = 1, full entropy).
    """
    passes = passes or PassSettings()
    dtype = compute_dtype(input_ids.device, passes.bf16)
    # Column T-1 predicts nothing: its target is ignored (and dropped) instead of slicing the logits.
    targets = torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=IGNORE)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    chunk = passes.logits_chunk_tokens
    if chunk is not None and chunk < input_ids.numel():
        logp, entropy = _chunked(model, inputs, targets, with_entropy, dtype, chunk, passes)
    else:
        with autocast(input_ids.device, dtype):
            logits = model(**inputs).logits
        logp, entropy = _logits_stats(logits, targets, with_entropy, passes)
    return logp[:, :-1], entropy[:, :-1] if entropy is not None else None


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
    passes: PassSettings | None = None,
    max_rows: int | None = None,
    split_width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`token_logprobs` of a whole batch without gradient, in micro-batches of at most
    ``passes.tokens_per_micro_batch`` tokens (and ``max_rows`` rows), each trimmed to its
    longest row; returns ``[N, T-1]`` tensors on the inputs' device (0 past each row's end).
    ``split_width``: the width the micro-batches are sized for (default: the batch's own;
    ranks of a sharded model pass :func:`lockstep_width`)."""
    passes = passes or PassSettings()
    n, width = input_ids.shape
    logp_parts: list[torch.Tensor] = []
    entropy_parts: list[torch.Tensor] = []
    for start, stop in micro_batches(n, split_width or width, passes.tokens_per_micro_batch, max_rows):
        used = max(int(attention_mask[start:stop].sum(dim=1).max()), 2)
        ids, attention = input_ids[start:stop, :used], attention_mask[start:stop, :used]
        positions = position_ids[start:stop, :used] if position_ids is not None else None
        logp, entropy = token_logprobs(model, ids, attention, positions, with_entropy, passes)
        logp_parts.append(_pad_columns(logp, width - 1))
        if entropy is not None:
            entropy_parts.append(_pad_columns(entropy, width - 1))
    return torch.cat(logp_parts), torch.cat(entropy_parts) if with_entropy else None
