"""Per-sample gradient features under a proxy model (SPEC §3).

The feature of a sample (prompt x, completion y) is the gradient, over every trainable
parameter, of the mean negative log-likelihood of y's tokens given x (prompt tokens
masked), taken one sample at a time with the model in eval mode, then projected to
``dim`` with :func:`slingshot.algorithms.gvendi.rademacher_project` and L2-normalised.

Two ways to get per-sample gradients, which must agree (tested):

* ``vmap``: ``torch.func.vmap(grad(loss))`` over a right-padded batch — one batched
  forward/backward for ``batch_size`` samples. Right padding cannot change a real
  token's logits (the model is causal), so the padded batch gives the same gradients
  as the samples alone.
* ``loop``: one ordinary ``loss.backward()`` per sample.

Features are computed on the device the proxy model is on (each rank's GPU in a
multi-rank job, an array task's GPU) and returned on the CPU.

Memory: the per-sample gradients of up to ``group`` samples are held at once
(``group × D`` floats, D = number of parameters) and projected together, which
amortises generating the ±1 rows; ``group`` is chosen from ``memory_mb``. The
projection itself adds only O(block_size × dim) — never D × dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from slingshot.algorithms.gvendi import rademacher_project
from slingshot.data.packing import IGNORE_INDEX, tokenize_sft

if TYPE_CHECKING:
    from slingshot.config import SynthConfig

Method = Literal["vmap", "loop"]


@dataclass(frozen=True)
class FeatureSpec:
    """How features are computed; identical for every shard of every round."""

    dim: int
    seed: int  # selects the projection matrix
    block_size: int  # projection rows generated per step
    method: Method = "vmap"
    batch_size: int = 8  # samples per vmap call (activation memory)
    memory_mb: float = 512.0  # budget for the per-sample gradients held before projecting
    max_length: int = 512  # tokens per sample (prompt + completion), truncated beyond

    @classmethod
    def from_config(cls, cfg: SynthConfig, seed: int) -> FeatureSpec:
        """The stage's spec; ``seed`` picks the one projection every shard and round shares."""
        return cls(
            dim=cfg.feature_dim,
            seed=seed,
            block_size=cfg.projection_block_size,
            method=cfg.feature_method,
            batch_size=cfg.feature_batch_size,
            memory_mb=cfg.feature_memory_mb,
            max_length=cfg.feature_max_tokens,
        )


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt


def encode(tokenizer: object, prompt: str, completion: str, max_length: int) -> Encoded:
    """Chat-template the pair exactly as SFT will train on it; loss only on the completion."""
    ex = tokenize_sft(tokenizer, prompt, completion, max_length=max_length)
    if not any(label != IGNORE_INDEX for label in ex.labels[1:]):
        raise ValueError(f"sample has no completion tokens within max_length={max_length}: {prompt[:80]!r}")
    return Encoded(ex.input_ids, ex.labels)


def _mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean NLL of the labelled tokens; ``logits`` [T, V] predict ``labels`` [T] shifted by one."""
    logits = logits[:-1].float()
    targets = labels[1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(logp * mask).sum() / mask.sum()


def trainable_params(model: torch.nn.Module) -> dict[str, Tensor]:
    """Trainable parameters in a fixed order (the order of the flattened gradient)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def grads_loop(model: torch.nn.Module, samples: Sequence[Encoded]) -> list[Tensor]:
    """Per-sample gradients, one backward per sample: per parameter a ``[N, numel]`` tensor."""
    params = trainable_params(model)
    device = next(iter(params.values())).device
    out: list[list[Tensor]] = [[] for _ in params]
    for s in samples:
        ids = torch.tensor([s.input_ids], device=device)
        labels = torch.tensor(s.labels, device=device)
        for p in params.values():
            p.grad = None
        loss = _mean_nll(model(input_ids=ids).logits[0], labels)
        loss.backward()
        for i, p in enumerate(params.values()):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            out[i].append(g.detach().reshape(-1).clone())
    for p in params.values():
        p.grad = None
    return [torch.stack(chunks) for chunks in out]


def grads_vmap(model: torch.nn.Module, samples: Sequence[Encoded], pad_token_id: int) -> list[Tensor]:
    """Per-sample gradients with ``torch.func``: one vmapped grad over a right-padded batch."""
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in trainable_params(model).items()}
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        labels[i, : len(s.labels)] = torch.tensor(s.labels)

    def loss(p: dict[str, Tensor], one_ids: Tensor, one_labels: Tensor) -> Tensor:
        # No attention mask: padding is only on the right, and causal attention already
        # keeps it out of every real position (a mask would need data-dependent checks
        # that vmap cannot trace).
        logits = functional_call(model, p, args=(), kwargs={"input_ids": one_ids.unsqueeze(0)}).logits[0]
        return _mean_nll(logits, one_labels)

    device = next(iter(params.values())).device
    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, ids.to(device), labels.to(device))
    return [per_sample[name].reshape(len(samples), -1) for name in params]


def group_size(n_params: int, spec: FeatureSpec) -> int:
    """Samples whose gradients fit ``memory_mb`` at once (×2: the vmap output and its copy)."""
    per_sample = n_params * 4 * 2
    return max(1, int(spec.memory_mb * 2**20 // per_sample))


def gradient_features(
    model: torch.nn.Module,
    tokenizer: object,
    pairs: Sequence[tuple[str, str]],
    spec: FeatureSpec,
) -> tuple[Tensor, int]:
    """Features ``[N, dim]`` (unit rows) of (prompt, completion) pairs, and the tokens processed."""
    if not pairs:
        return torch.zeros(0, spec.dim), 0
    was_training = model.training
    model.eval()  # SPEC: eval mode (no dropout) so a sample's feature is deterministic
    encoded = [encode(tokenizer, p, c, spec.max_length) for p, c in pairs]
    tokens = sum(len(e.input_ids) for e in encoded)
    n_params = sum(p.numel() for p in trainable_params(model).values())
    group = group_size(n_params, spec)
    pad = int(getattr(tokenizer, "pad_token_id", 0) or 0)
    feats: list[Tensor] = []
    try:
        for g0 in range(0, len(encoded), group):
            chunk = encoded[g0 : g0 + group]
            if spec.method == "vmap":
                # vmap in sub-batches (activation memory), gradients joined per parameter.
                parts = [
                    grads_vmap(model, chunk[b : b + spec.batch_size], pad)
                    for b in range(0, len(chunk), spec.batch_size)
                ]
                per_param = [torch.cat(ps) for ps in zip(*parts, strict=True)] if len(parts) > 1 else parts[0]
                del parts
            elif spec.method == "loop":
                per_param = grads_loop(model, chunk)
            else:
                raise ValueError(f"unknown feature method {spec.method!r}")
            feats.append(rademacher_project(per_param, spec.dim, spec.seed, spec.block_size))
            del per_param
    finally:
        model.train(was_training)
    out = torch.cat(feats).cpu()  # computed on the model's device, kept on the CPU
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("non-finite gradient features: check the proxy model")
    return out, tokens
