"""The policy update of the RL stages: clipped policy-gradient steps, one routine for both.

:func:`policy_update` is the shared loop: ``epochs`` passes over the mini-batches; per
mini-batch the gradients are zeroed, the stage's loss function runs the forward and
backward passes (one or several micro-batches), gradients are summed over ranks,
clipped, and the optimizer and scheduler step; then the post-step hook runs (RLP's EMA
teacher φ ← τφ + (1−τ)θ after EVERY optimizer step). :func:`clipped_loss` is the shared
loss: the decoupled-clip policy loss plus, when a reference is given, β·KL to it.

The two stages lay out their batches differently, so each has its own entry point that
supplies the per-mini-batch loss (and keeps its own metrics exactly as before):

* :func:`update_on_groups` (ProRL): response groups, θ_old of the first mini-batch from its
  own training forward, the top-entropy ("forking token") mask, KL to the reference;
* :func:`update_on_thoughts` (RLP): thought tokens only, micro-batches weighted by their
  share of the mini-batch's thoughts, ``ppo_epochs`` passes, token-weighted clip statistics.

Every forward pass, with or without gradient, covers at most ``tokens_per_micro_batch``
tokens (:func:`slingshot.train.logprobs.micro_batches`); a mini-batch of several
micro-batches accumulates their gradients with the weights that make the sum equal the
whole mini-batch's loss.

Data parallel: each rank holds its share of every mini-batch (whole groups, see
:func:`slingshot.dist.minibatch_shard`). Every normaliser (the token, row or thought count
a mean is over) is the GLOBAL one, all-reduced before the backward pass, so each rank's
loss is its share of the global loss and the gradients are summed over ranks: N ranks
take exactly the step one process takes on the same global batch, however unevenly the
tokens fall. The metrics are summed the same way, so every rank reports the global values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from slingshot import dist
from slingshot.algorithms.entropy import top_entropy_counts, top_entropy_mask
from slingshot.algorithms.kl import KLKind, kl_penalty
from slingshot.algorithms.policy_loss import (
    Aggregation,
    ISMode,
    PolicyLossOutput,
    behaviour_importance_weights,
    clipped_policy_loss,
)
from slingshot.algorithms.rlp import ema_update_
from slingshot.config import ProRLConfig, RLPConfig
from slingshot.models.hf import resident
from slingshot.models.sharding import is_sharded, sum_sharded_gradients
from slingshot.train.logprobs import (
    PassSettings,
    batched_token_logprobs,
    lockstep_width,
    micro_batches,
    token_logprobs,
)
from slingshot.train.rl_batch import RLBatch, masked_mean
from slingshot.train.rlp_batch import Position, build_baseline_batch

if TYPE_CHECKING:
    from slingshot.train.rl_sampling import TrainBatch
    from slingshot.train.rlp_batch import ThoughtBatch

M = TypeVar("M")  # what one mini-batch is (a stage's choice)
S = TypeVar("S")  # what its loss function reports

CLIP_STATS = ("clip_frac", "clip_frac_low", "clip_frac_high", "ratio_mean")
IS_STATS = ("is_weight_mean", "is_zero_frac")  # behaviour importance weights, per update token


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
    micro_batch_rows: int | None = None  # at most this many rows per forward pass ...
    passes: PassSettings = PassSettings()  # ... and at most this many tokens; precision
    # (low, high, mode) of the importance weights of θ_old over the engine's behaviour
    # policy; None: the engine's log-probs (when there are any) are θ_old themselves.
    behaviour_is: tuple[float, float, ISMode] | None = None

    @classmethod
    def from_config(cls, cfg: ProRLConfig | RLPConfig, world_size: int = 1) -> UpdateSettings:
        """``world_size``: ProRL's mini-batch is ``mini_batch_prompts`` groups over all ranks,
        so each rank's is its share (the stage checks that it divides)."""
        if isinstance(cfg, ProRLConfig):
            return cls(
                eps_low=cfg.eps_low,
                eps_high=cfg.eps_high,
                loss_agg=cfg.loss_agg,
                grad_clip=cfg.optimizer.grad_clip,
                kl_coef=cfg.kl_coef,
                kl_kind=cfg.kl_kind,
                top_entropy_q=cfg.top_entropy_q,
                minibatch_rows=cfg.mini_batch_prompts // world_size * cfg.n_samples,  # whole groups
                passes=sampling_passes(cfg),
                behaviour_is=(
                    (cfg.behaviour_is.low, cfg.behaviour_is.high, cfg.behaviour_is.mode)
                    if cfg.behaviour_is.enabled
                    else None
                ),
            )
        return cls(
            eps_low=cfg.eps_low,
            eps_high=cfg.eps_high,
            loss_agg="seq-mean-token-mean",  # SPEC §2: mean over thoughts of the per-thought token mean
            grad_clip=cfg.optimizer.grad_clip,
            epochs=cfg.ppo_epochs,
            mini_batches=cfg.mini_batches,
            micro_batch_rows=cfg.micro_batch_size,
            passes=sampling_passes(cfg),
        )

    def minibatch_bounds(self, rows: int) -> list[tuple[int, int]]:
        """``[start, stop)`` row ranges of the mini-batches of a batch of ``rows`` rows."""
        size = self.minibatch_rows or rows // self.mini_batches
        return [(start, start + size) for start in range(0, rows, size)]

    def micro_bounds(self, start: int, stop: int, width: int) -> list[tuple[int, int]]:
        """``[start, stop)`` row ranges of the forward passes over rows [start, stop) of
        ``width``, sized for the widest rank's width (a collective with several ranks), so
        every rank runs as many passes (a sharded policy all-gathers in each)."""
        micro = micro_batches(
            stop - start, lockstep_width(width), self.passes.tokens_per_micro_batch, self.micro_batch_rows
        )
        return [(start + a, start + b) for a, b in micro]


def sampling_passes(cfg: ProRLConfig | RLPConfig) -> PassSettings:
    """The stage's forward passes with log-probs at its sampling temperature (SPEC §7): θ,
    θ_old and the reference in the ratio and the KL are the distribution the tokens came from."""
    return dataclasses.replace(PassSettings.from_memory(cfg.memory), temperature=cfg.temperature)


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
            # Each rank's loss is its share of the globally normalised loss: the gradient is the
            # sum (a sharded policy's backward has reduce-scattered it so already).
            if is_sharded(policy):
                sum_sharded_gradients(policy, dist.world_size())
            else:
                dist.all_reduce_grads(policy, "sum")
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
    weights: tuple[float, float] = (1.0, 1.0),
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, PolicyLossOutput, torch.Tensor | None]:
    """The clipped policy loss over ``update_mask`` (each token's term times ``token_weights``
    when given), plus β·KL to the reference over ``response_mask`` when ``ref_logp`` is given;
    returns (loss, policy-loss parts, KL).

    ``weights``: (policy, KL) weights of this micro-batch's means in the mini-batch's (its
    share of the tokens or rows each mean is over); the returned loss is the weighted one."""
    out = clipped_policy_loss(
        logp,
        old_logp,
        advantages,
        update_mask,
        settings.eps_low,
        settings.eps_high,
        settings.loss_agg,
        token_weights,
    )
    policy_loss = out.loss if weights[0] == 1.0 else out.loss * weights[0]
    if ref_logp is None:
        return policy_loss, out, None
    assert response_mask is not None
    kl = masked_mean(kl_penalty(logp, ref_logp, settings.kl_kind), response_mask)
    kl_term = kl if weights[1] == 1.0 else kl * weights[1]
    return policy_loss + settings.kl_coef * kl_term, out, kl


def ema_teacher_hook(ema: torch.nn.Module, policy: torch.nn.Module, tau: float) -> Callable[[], None]:
    """The post-step hook φ ← τφ + (1−τ)θ of RLP's EMA teacher."""

    def follow() -> None:
        ema_update_(ema.parameters(), policy.parameters(), tau)

    return follow


# --------------------------------------------------------------------------- ProRL: response groups


def _weights(
    mb: RLBatch, update_mask: torch.Tensor, totals: dict[str, float], agg: Aggregation
) -> tuple[float, float]:
    """(policy, KL) weights of a micro-batch: its share of the mini-batch's update tokens
    (token-mean) or of its rows with update tokens (seq-mean), and of its response tokens."""
    if agg == "token-mean":
        policy_weight = float(update_mask.sum()) / max(totals["update_tokens"], 1.0)
    else:
        policy_weight = float(update_mask.any(dim=1).sum()) / max(totals["update_rows"], 1.0)
    return policy_weight, float(mb.response_mask.sum()) / max(totals["response_tokens"], 1.0)


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
    passes = settings.passes

    def no_grad_pass(model: torch.nn.Module, mb: RLBatch, with_entropy: bool) -> tuple[torch.Tensor, ...]:
        ids, attention, positions = mb.input_ids, mb.attention_mask, mb.position_ids
        width = lockstep_width(ids.shape[1])  # as many passes on every rank
        return batched_token_logprobs(
            model, ids, attention, positions, with_entropy, passes, split_width=width
        )

    old_logp: list[torch.Tensor | None] = [None]
    entropy: list[torch.Tensor | None] = [None]
    ref_logp: list[torch.Tensor] = []
    # θ_old is the policy before this step's first update, for every mini-batch. The first
    # mini-batch is trained before any update, so its θ_old values come from its own
    # training forward (detached): one forward pass saved, as on-policy trainers do.
    # With the engine's log-probs (one-step-async: sampled a weight version behind) the
    # ratio is against those instead, the behaviour policy; the pass still gives entropies.
    # With behaviour_is the ratio stays against the trainer's θ_old and the engine's
    # log-probs only weigh each token by ρ_b = π_θold / π_behaviour, within bounds.
    is_bounds = settings.behaviour_is

    def ratio_base(trainer_logp: torch.Tensor, mb: RLBatch) -> torch.Tensor:
        return trainer_logp if mb.behaviour_logprobs is None or is_bounds else mb.behaviour_logprobs

    for mb in minibatches[1:]:
        lp, ent = no_grad_pass(policy, mb, with_entropy=True)
        old_logp.append(ratio_base(lp, mb))
        entropy.append(ent)
    if reference is not None:
        with resident(reference, device):  # a CPU-offloaded reference visits the GPU once per step
            ref_logp = [no_grad_pass(reference, mb, with_entropy=False)[0] for mb in minibatches]

    def minibatch_loss(i: int, mini: RLBatch) -> dict[str, float]:
        q = settings.top_entropy_q
        # The forking-token mask keeps ceil(q·n) tokens per response: the counts, and so the
        # weights of the micro-batches, are known before any entropy is.
        kept = top_entropy_counts(mini.response_mask, q) if q < 1.0 else mini.response_mask.sum(dim=1)
        # Global counts: each rank's means are over the whole mini-batch's tokens/rows.
        totals = dist.all_reduce_sum(
            {
                "update_tokens": float(kept.sum()),
                "update_rows": float((kept > 0).sum()),
                "response_tokens": float(mini.response_mask.sum()),
            }
        )
        sums = dict.fromkeys(
            ("loss", "policy_loss", "kl", "entropy_sum", "update_tokens", *CLIP_STATS, *IS_STATS), 0.0
        )
        start, _ = bounds[i]
        for a, b in settings.micro_bounds(0, mini.size, mini.input_ids.shape[1]):
            mb = mini.rows(slice(a, b))
            resp = mb.response_mask
            width = resp.shape[1]
            logp, ent = token_logprobs(
                policy, mb.input_ids, mb.attention_mask, mb.position_ids, with_entropy=i == 0, passes=passes
            )
            if i == 0:
                old = ratio_base(logp.detach(), mb)
            else:
                old, ent = old_logp[i][a:b, :width], entropy[i][a:b, :width]  # type: ignore[index]
            assert ent is not None
            sums["entropy_sum"] += float(torch.where(resp, ent, torch.zeros_like(ent)).sum())
            # Forking tokens: the gradient flows only through each response's highest-entropy
            # tokens (under θ_old); the KL still covers every response token.
            update_mask = top_entropy_mask(ent, resp, q) if q < 1.0 else resp
            weights = _weights(mb, update_mask, totals, settings.loss_agg)
            adv = train.advantages[start + a : start + b].to(device)
            ref = ref_logp[i][a:b, :width] if reference is not None else None
            is_weights = None
            if is_bounds is not None:
                assert mb.behaviour_logprobs is not None  # the config requires one-step-async
                is_weights = behaviour_importance_weights(old, mb.behaviour_logprobs, *is_bounds)
            loss, out, kl = clipped_loss(
                logp, old, adv, update_mask, settings, resp, ref, weights, is_weights
            )
            loss.backward()
            n_update = float(update_mask.sum())
            token_share = n_update / max(totals["update_tokens"], 1.0)
            if is_weights is not None:
                on_update = is_weights[update_mask]
                sums["is_weight_mean"] += float(on_update.sum())
                sums["is_zero_frac"] += float((on_update == 0).sum())
            sums["loss"] += float(loss.detach())
            sums["policy_loss"] += float(out.loss.detach()) * weights[0]
            sums["kl"] += float(kl.detach()) * weights[1] if kl is not None else 0.0
            sums["update_tokens"] += n_update
            for key in CLIP_STATS:  # fractions of the update tokens
                sums[key] += float(getattr(out, key)) * token_share
        sums = dist.all_reduce_sum(sums)  # every rank's shares: the global values
        stats = {key: sums[key] for key in ("loss", "policy_loss", "entropy_sum", *CLIP_STATS)}
        for key in IS_STATS:  # sums over the update tokens -> their means
            stats[key] = sums[key] / max(totals["update_tokens"], 1.0)
        stats["entropy_tokens"] = totals["response_tokens"]
        stats["update_token_frac"] = sums["update_tokens"] / max(totals["response_tokens"], 1.0)
        if reference is not None:
            stats["kl"] = sums["kl"]
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
    if settings.behaviour_is is not None:
        metrics.update({key: mean(key) for key in IS_STATS})
    entropy_tokens = sum(step.stats["entropy_tokens"] for step in steps)
    metrics["entropy"] = sum(step.stats["entropy_sum"] for step in steps) / max(entropy_tokens, 1.0)
    metrics["updates"] = float(n)
    metrics["lr"] = float(scheduler.get_last_lr()[0])
    # Every rank holds as many rows: the mean of the ranks' means is the global mean.
    metrics["adv_abs_mean"] = dist.all_reduce_scalar(float(train.advantages.abs().mean()), "mean")
    return metrics


# --------------------------------------------------------------------------- RLP's control: next tokens


def next_token_update(
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    positions: Sequence[Position],
    pad_id: int,
    settings: UpdateSettings,
    device: torch.device,
) -> dict[str, float]:
    """Next-token training on the positions' ``context target`` sequences (RLP's control).

    One pass; each of the ``mini_batches`` optimizer steps covers its positions, its loss the
    mean token NLL over the mini-batch's tokens on every rank (gradients summed over ranks).
    Log-probs at T = 1: these are the model's own predictions, not a sampling distribution.
    Returns the mean loss, grad norm, lr and the tokens trained on (global)."""
    batch = build_baseline_batch(positions, pad_id)
    targets = batch.attention_mask[:, 1:].bool()  # column j predicts token j + 1
    width = batch.input_ids.shape[1]
    passes = dataclasses.replace(settings.passes, temperature=1.0)

    def minibatch_loss(_: int, bounds: tuple[int, int]) -> float:
        start, stop = bounds
        n_tokens = dist.all_reduce_scalar(float(targets[start:stop].sum()))
        loss_sum = 0.0
        for a, b in settings.micro_bounds(start, stop, width):
            logp, _ = token_logprobs(
                policy, batch.input_ids[a:b].to(device), batch.attention_mask[a:b].to(device), passes=passes
            )
            mask = targets[a:b, : logp.shape[1]].to(device)
            loss = -(logp * mask).sum() / max(n_tokens, 1.0)
            loss.backward()
            loss_sum += float(loss.detach())
        return dist.all_reduce_scalar(loss_sum)

    one_pass = dataclasses.replace(settings, epochs=1)
    bounds = one_pass.minibatch_bounds(len(positions))
    steps = policy_update(policy, optimizer, scheduler, bounds, minibatch_loss, one_pass)
    return {
        "loss": sum(step.stats for step in steps) / len(steps),
        "grad_norm": sum(step.grad_norm for step in steps) / len(steps),
        "lr": float(optimizer.param_groups[0]["lr"]),
        "tokens": dist.all_reduce_scalar(float(batch.attention_mask.sum())),
    }


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
    width = batch.input_ids.shape[1]
    has_thought = batch.thought_mask.any(dim=1)
    # Clip statistics are per valid token: each micro-batch's are weighted by its tokens.
    clip_sums = dict.fromkeys(CLIP_STATS, 0.0)
    tokens_seen = 0

    def minibatch_loss(_: int, bounds: tuple[int, int]) -> float:
        nonlocal tokens_seen
        mini, mini_stop = bounds
        # The global count of thoughts in this mini-batch (every rank holds its share of it).
        n_thoughts = int(dist.all_reduce_scalar(float(has_thought[mini:mini_stop].sum())))
        mini_loss = 0.0
        for start, stop in settings.micro_bounds(mini, mini_stop, width):
            sub = batch.rows(start, stop)
            logp, _ = token_logprobs(
                policy, sub.input_ids.to(device), sub.attention_mask.to(device), passes=settings.passes
            )
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
        return dist.all_reduce_scalar(mini_loss)

    bounds = settings.minibatch_bounds(batch.input_ids.shape[0])
    steps = policy_update(policy, optimizer, scheduler, bounds, minibatch_loss, settings, post_step)
    loss_sum = 0.0
    for step in steps:
        loss_sum += step.stats
    totals = dist.all_reduce_sum({**clip_sums, "tokens": float(tokens_seen)})
    metrics = {key: totals[key] / max(totals["tokens"], 1.0) for key in CLIP_STATS}
    metrics["loss"] = loss_sum / (settings.epochs * settings.mini_batches)
    metrics["grad_norm"] = sum(step.grad_norm for step in steps) / len(steps)
    metrics["lr"] = float(optimizer.param_groups[0]["lr"])
    return metrics
