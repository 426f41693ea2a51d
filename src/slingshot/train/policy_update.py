"""The policy update of the RL stages: clipped policy-gradient steps, one routine for both.

:func:`policy_update` is the shared loop: ``epochs`` passes over the mini-batches; per
mini-batch the gradients are zeroed, the stage's loss function runs the forward and
backward passes (one or several micro-batches), gradients are averaged over ranks,
clipped, and the optimizer and scheduler step; then the post-step hook runs (RLP's EMA
teacher φ ← τφ + (1−τ)θ after EVERY optimizer step). :func:`clipped_loss` is the shared
loss: the decoupled-clip policy loss plus, when a reference is given, β·KL to it.

The two stages lay out their batches differently, so each has its own entry point that
supplies the per-mini-batch loss (and keeps its own metrics exactly as before):

* :func:`update_on_groups` (ProRL): response groups, one forward per mini-batch, θ_old of
  the first mini-batch from its own training forward, the top-entropy ("forking token")
  mask, KL to the reference;
* :func:`update_on_thoughts` (RLP): thought tokens only, micro-batches weighted by their
  share of the mini-batch's thoughts, ``ppo_epochs`` passes, token-weighted clip statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from slingshot import dist
from slingshot.algorithms.entropy import top_entropy_mask
from slingshot.algorithms.kl import KLKind, kl_penalty
from slingshot.algorithms.policy_loss import Aggregation, PolicyLossOutput, clipped_policy_loss
from slingshot.algorithms.rlp import ema_update_
from slingshot.config import ProRLConfig, RLPConfig
from slingshot.train.logprobs import token_logprobs
from slingshot.train.rl_batch import RLBatch, masked_mean

if TYPE_CHECKING:
    from slingshot.train.rl_sampling import TrainBatch
    from slingshot.train.rlp_batch import ThoughtBatch

M = TypeVar("M")  # what one mini-batch is (a stage's choice)
S = TypeVar("S")  # what its loss function reports

CLIP_STATS = ("clip_frac", "clip_frac_low", "clip_frac_high", "ratio_mean")


@dataclass(frozen=True)
class UpdateSettings:
    """What a policy update needs from a stage's config (see :meth:`from_config`)."""

    eps_low: float
    eps_high: float  # ProRL's entropy controller replaces it every step
    loss_agg: Aggregation
    grad_clip: float  # 0: no clipping (the norm is still measured)
    kl_coef: float = 0.0  # β of the KL term to the reference
    kl_kind: KLKind = "k2"
    top_entropy_q: float = 1.0  # < 1: gradient only through each response's top-q entropy tokens
    epochs: int = 1  # passes over the batch
    mini_batches: int = 1  # optimizer steps per pass: the batch split evenly ...
    minibatch_rows: int | None = None  # ... unless a fixed number of rows per step is given
    micro_batch_rows: int | None = None  # rows per forward pass (None: a whole mini-batch)

    @classmethod
    def from_config(cls, cfg: ProRLConfig | RLPConfig) -> UpdateSettings:
        if isinstance(cfg, ProRLConfig):
            return cls(
                eps_low=cfg.eps_low,
                eps_high=cfg.eps_high,
                loss_agg=cfg.loss_agg,
                grad_clip=cfg.optimizer.grad_clip,
                kl_coef=cfg.kl_coef,
                kl_kind=cfg.kl_kind,
                top_entropy_q=cfg.top_entropy_q,
                minibatch_rows=cfg.mini_batch_prompts * cfg.n_samples,  # whole groups
            )
        return cls(
            eps_low=cfg.eps_low,
            eps_high=cfg.eps_high,
            loss_agg="seq-mean-token-mean",  # SPEC §2: mean over thoughts of the per-thought token mean
            grad_clip=cfg.optimizer.grad_clip,
            epochs=cfg.ppo_epochs,
            mini_batches=cfg.mini_batches,
            micro_batch_rows=cfg.micro_batch_size,
        )

    def minibatch_bounds(self, rows: int) -> list[tuple[int, int]]:
        """``[start, stop)`` row ranges of the mini-batches of a batch of ``rows`` rows."""
        size = self.minibatch_rows or rows // self.mini_batches
        return [(start, start + size) for start in range(0, rows, size)]


@dataclass(frozen=True)
class UpdateStep(Generic[S]):
    """One optimizer step of :func:`policy_update`."""

    stats: S  # what the mini-batch's loss function returned
    grad_norm: float  # before clipping


def policy_update(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    minibatches: Sequence[M],
    minibatch_loss: Callable[[int, M], S],
    settings: UpdateSettings,
    post_step: Callable[[], None] | None = None,
) -> list[UpdateStep[S]]:
    """``settings.epochs`` passes over ``minibatches``, one optimizer step per mini-batch.

    ``minibatch_loss(index, minibatch)`` runs the forward and backward passes (it only
    accumulates ``.grad``); ``post_step`` runs after every optimizer step.
    """
    steps: list[UpdateStep[S]] = []
    for _ in range(settings.epochs):
        for index, minibatch in enumerate(minibatches):
            optimizer.zero_grad(set_to_none=True)
            stats = minibatch_loss(index, minibatch)
            # Each rank's loss is a mean over its own rows: the global gradient is the mean.
            dist.all_reduce_grads(policy, "mean")
            grad_norm = dist.clip_grad_norm(policy.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            if post_step is not None:
                post_step()
            steps.append(UpdateStep(stats, grad_norm))
    return steps


def clipped_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    update_mask: torch.Tensor,
    settings: UpdateSettings,
    response_mask: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, PolicyLossOutput, torch.Tensor | None]:
    """The clipped policy loss over ``update_mask``, plus β·KL to the reference over
    ``response_mask`` when ``ref_logp`` is given; returns (loss, policy-loss parts, KL)."""
    out = clipped_policy_loss(
        logp, old_logp, advantages, update_mask, settings.eps_low, settings.eps_high, settings.loss_agg
    )
    if ref_logp is None:
        return out.loss, out, None
    assert response_mask is not None
    kl = masked_mean(kl_penalty(logp, ref_logp, settings.kl_kind), response_mask)
    return out.loss + settings.kl_coef * kl, out, kl


def ema_teacher_hook(ema: torch.nn.Module, policy: torch.nn.Module, tau: float) -> Callable[[], None]:
    """The post-step hook φ ← τφ + (1−τ)θ of RLP's EMA teacher."""

    def follow() -> None:
        ema_update_(ema.parameters(), policy.parameters(), tau)

    return follow


# --------------------------------------------------------------------------- ProRL: response groups


def _logprobs(
    model: torch.nn.Module, batch: RLBatch, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return token_logprobs(model, batch.input_ids, batch.attention_mask, batch.position_ids, with_entropy)


def update_on_groups(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainBatch,
    settings: UpdateSettings,
    device: torch.device,
) -> dict[str, float]:
    """θ_old and reference log-probs for the whole batch, then one clipped update per mini-batch."""
    if settings.epochs != 1:
        raise ValueError("update_on_groups makes one pass: θ_old of the first mini-batch is its own forward")
    bounds = settings.minibatch_bounds(train.batch.size)
    minibatches = [train.batch.rows(slice(start, stop)).to(device) for start, stop in bounds]
    old_logp: list[torch.Tensor | None] = [None]
    entropy: list[torch.Tensor | None] = [None]
    ref_logp: list[torch.Tensor] = []
    with torch.no_grad():
        # θ_old is the policy before this step's first update, for every mini-batch. The first
        # mini-batch is trained before any update, so its θ_old values come from its own
        # training forward (detached): one forward pass saved, as on-policy trainers do.
        for i, mb in enumerate(minibatches):
            if i > 0:
                lp, ent = _logprobs(policy, mb, with_entropy=True)
                old_logp.append(lp)
                entropy.append(ent)
            if reference is not None:
                ref_logp.append(_logprobs(reference, mb, with_entropy=False)[0])

    def minibatch_loss(i: int, mb: RLBatch) -> dict[str, float]:
        resp = mb.response_mask
        if i == 0:
            logp, ent = _logprobs(policy, mb, with_entropy=True)
            ent = ent.detach()
            old = logp.detach()
        else:
            logp, _ = _logprobs(policy, mb, with_entropy=False)
            ent, old = entropy[i], old_logp[i]
        stats = {
            "entropy_sum": float(torch.where(resp, ent, torch.zeros_like(ent)).sum()),
            "entropy_tokens": float(resp.sum()),
        }
        # Forking tokens: the gradient flows only through each response's highest-entropy
        # tokens (under θ_old); the KL still covers every response token.
        q = settings.top_entropy_q
        update_mask = top_entropy_mask(ent, resp, q) if q < 1.0 else resp
        start, stop = bounds[i]
        adv = train.advantages[start:stop].to(device)
        loss, out, kl = clipped_loss(
            logp, old, adv, update_mask, settings, resp, ref_logp[i] if reference is not None else None
        )
        if kl is not None:
            stats["kl"] = float(kl.detach())
        loss.backward()
        stats["loss"] = float(loss.detach())
        stats["policy_loss"] = float(out.loss.detach())
        stats.update({key: float(getattr(out, key)) for key in CLIP_STATS})
        stats["update_token_frac"] = float(update_mask.sum()) / max(float(resp.sum()), 1.0)
        return stats

    steps = policy_update(policy, optimizer, scheduler, minibatches, minibatch_loss, settings)
    n = len(steps)

    def mean(key: str) -> float:
        return sum(step.stats[key] for step in steps) / n

    metrics: dict[str, float] = {}
    if reference is not None:
        metrics["kl"] = mean("kl")
        # Before any update of this step: the policy's distance from its anchor. 0 right
        # after a reference reset; a resume must find the same value as before the stop.
        metrics["kl_start"] = steps[0].stats["kl"]
    metrics["grad_norm"] = sum(step.grad_norm for step in steps) / n
    for key in ("loss", "policy_loss", *CLIP_STATS, "update_token_frac"):
        metrics[key] = mean(key)
    entropy_tokens = sum(step.stats["entropy_tokens"] for step in steps)
    metrics["entropy"] = sum(step.stats["entropy_sum"] for step in steps) / max(entropy_tokens, 1.0)
    metrics["updates"] = float(n)
    metrics["lr"] = float(scheduler.get_last_lr()[0])
    metrics["adv_abs_mean"] = float(train.advantages.abs().mean())
    return metrics


# --------------------------------------------------------------------------- RLP: thought tokens


def update_on_thoughts(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: ThoughtBatch,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    settings: UpdateSettings,
    device: torch.device,
    post_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Clipped policy-gradient steps on the thought tokens (``post_step``: the EMA teacher).

    ``advantages``: [N] (one per thought). Each of the ``mini_batches`` optimizer steps
    covers whole groups; its loss is the mean over its thoughts of the per-thought token
    mean, accumulated over micro-batches with weight (thoughts in micro)/(thoughts in mini).
    """
    micro = settings.micro_batch_rows
    assert micro is not None, "update_on_thoughts needs micro_batch_rows"
    has_thought = batch.thought_mask.any(dim=1)
    # Clip statistics are per valid token: each micro-batch's are weighted by its tokens.
    clip_sums = dict.fromkeys(CLIP_STATS, 0.0)
    tokens_seen = 0

    def minibatch_loss(_: int, bounds: tuple[int, int]) -> float:
        nonlocal tokens_seen
        mini, mini_stop = bounds
        n_thoughts = int(has_thought[mini:mini_stop].sum())
        mini_loss = 0.0
        for start in range(mini, mini_stop, micro):
            stop = min(start + micro, mini_stop)
            sub = batch.rows(start, stop)
            logp, _ = token_logprobs(policy, sub.input_ids.to(device), sub.attention_mask.to(device))
            mask = sub.thought_mask.to(device)
            old = old_logp[start:stop, : logp.shape[1]].to(device)
            loss, out, _ = clipped_loss(logp, old, advantages[start:stop].to(device), mask, settings)
            weight = int(has_thought[start:stop].sum()) / max(n_thoughts, 1)
            (loss * weight).backward()
            mini_loss += loss.item() * weight
            n_tok = int(mask.sum())
            for key in CLIP_STATS:
                clip_sums[key] += float(getattr(out, key)) * n_tok
            tokens_seen += n_tok
        return mini_loss

    bounds = settings.minibatch_bounds(batch.input_ids.shape[0])
    steps = policy_update(policy, optimizer, scheduler, bounds, minibatch_loss, settings, post_step)
    loss_sum = 0.0
    for step in steps:
        loss_sum += step.stats
    metrics = {key: value / max(tokens_seen, 1) for key, value in clip_sums.items()}
    metrics["loss"] = loss_sum / (settings.epochs * settings.mini_batches)
    metrics["grad_norm"] = sum(step.grad_norm for step in steps) / len(steps)
    metrics["lr"] = float(optimizer.param_groups[0]["lr"])
    return metrics
