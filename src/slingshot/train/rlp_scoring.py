"""RLP's teacher-forced scoring passes (SPEC §2), no gradient.

The policy scores every ``context <think> c </think> target`` sequence once at sampling
time (θ_old): the target log-probs give S_pred (at T = 1) and the thought-token log-probs,
at the sampling temperature, are kept as the old log-probs of the update (SPEC §7). The EMA teacher φ scores ``context target`` with no
thought for the baseline S_ema. Each pass runs in micro-batches of at most
``micro_batch_size`` rows and ``tokens_per_micro_batch`` tokens (the update's split).
:func:`thought_rewards` turns the scores into rewards and advantages, honouring the batch's
unclosed-thought treatment (an excluded thought is in no group; a ``zero_reward`` one gets 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from slingshot.algorithms.rlp import information_gain_reward, rlp_group_advantages
from slingshot.models.hf import resident
from slingshot.train.logprobs import PassSettings, lockstep_width, micro_batches, token_logprobs
from slingshot.train.rlp_batch import Position, ThoughtBatch, build_baseline_batch


@dataclass
class ThoughtScores:
    old_logp: torch.Tensor  # [N, L-1] θ_old log-probs (only the thought mask is meaningful)
    s_pred: torch.Tensor  # [N, k] log p_θ(target | context, thought)
    entropy_sum: float  # Σ policy entropy over sampled thought tokens
    thought_tokens: int


@torch.no_grad()
def score_thoughts(
    model: torch.nn.Module,
    batch: ThoughtBatch,
    micro_batch_size: int,
    device: torch.device,
    passes: PassSettings | None = None,
) -> ThoughtScores:
    """One teacher-forced pass (in micro-batches) over all B·G thought sequences.

    ``passes.temperature``: the thoughts' sampling temperature, of the old log-probs; S_pred
    is at T = 1 (a second pass over each micro-batch when the two differ)."""
    n, width = batch.input_ids.shape
    old_logp = torch.zeros((n, width - 1))
    s_pred = torch.empty(batch.target_index.shape)
    entropy_sum = 0.0
    passes = passes or PassSettings()
    model_passes = dataclasses.replace(passes, temperature=1.0)
    split = lockstep_width(width)  # as many passes on every rank (a sharded policy all-gathers)
    for start, stop in micro_batches(n, split, passes.tokens_per_micro_batch, micro_batch_size):
        sub = batch.rows(start, stop)
        ids, attention = sub.input_ids.to(device), sub.attention_mask.to(device)
        logp, entropy = token_logprobs(model, ids, attention, with_entropy=True, passes=passes)
        assert entropy is not None
        model_logp = (
            logp
            if passes.temperature == 1.0
            else token_logprobs(model, ids, attention, passes=model_passes)[0]
        )
        mask = sub.thought_mask.to(device)
        old_logp[start:stop, : logp.shape[1]] = logp.cpu()
        s_pred[start:stop] = model_logp.gather(1, sub.target_index.to(device)).cpu()
        entropy_sum += float((entropy * mask).sum())
    return ThoughtScores(old_logp, s_pred, entropy_sum, int(batch.thought_mask.sum()))


@torch.no_grad()
def score_baseline(
    ema: torch.nn.Module,
    positions: list[Position],
    pad_id: int,
    micro_batch_size: int,
    device: torch.device,
    passes: PassSettings | None = None,
) -> torch.Tensor:
    """S_ema = log p_φ(target | context), no thought: [B, k] (a CPU-offloaded φ visits the device),
    at T = 1 whatever ``passes.temperature`` says."""
    batch = build_baseline_batch(positions, pad_id)
    out = []
    passes = dataclasses.replace(passes or PassSettings(), temperature=1.0)
    width = batch.input_ids.shape[1]
    with resident(ema, device):
        for start, stop in micro_batches(
            len(positions), lockstep_width(width), passes.tokens_per_micro_batch, micro_batch_size
        ):
            ids = batch.input_ids[start:stop].to(device)
            attention = batch.attention_mask[start:stop].to(device)
            logp, _ = token_logprobs(ema, ids, attention, passes=passes)
            out.append(logp.gather(1, batch.target_index[start:stop].to(device)).cpu())
    return torch.cat(out)


@dataclass
class ThoughtRewards:
    rewards: torch.Tensor  # [B, G] S_pred − S_ema (0 for a zero_reward thought)
    advantages: torch.Tensor  # [N] per thought, 0 for one excluded from its group
    valid: torch.Tensor  # [B, G] bool: the thoughts that formed the groups

    def metrics(self, batch: ThoughtBatch) -> dict[str, float]:
        """Reward statistics over the valid thoughts, and what became of the unclosed ones."""
        return thought_metrics(self.rewards, self.valid, batch.closed, batch.ended)


def thought_metrics(
    rewards: torch.Tensor, valid: torch.Tensor, closed: torch.Tensor, ended: torch.Tensor
) -> dict[str, float]:
    """Reward statistics over the valid thoughts (``rewards``/``valid`` [B, G]) and what became
    of the unclosed ones (``closed``/``ended`` [N]); order-free, so gathered ranks' tensors give
    the global batch's values."""
    r = rewards[valid]
    n = closed.numel()
    unclosed = ~closed
    return {
        "reward_mean": float(r.mean()) if r.numel() else 0.0,
        "reward_std": float(r.std(unbiased=False)) if r.numel() else 0.0,
        "gain_positive_frac": float((r > 0).float().mean()) if r.numel() else 0.0,
        "thought_closed_frac": float(closed.float().mean()),
        "thought/unclosed_frac": float(unclosed.float().mean()),
        "thought/capped_frac": float((unclosed & ~ended).sum()) / n,  # hit thought_tokens
        "thought/ended_frac": float(ended.float().mean()),  # end of text or a nested open
        "thought/excluded_frac": float((~valid).float().mean()),
    }


def thought_rewards(s_pred: torch.Tensor, s_ema: torch.Tensor, batch: ThoughtBatch) -> ThoughtRewards:
    """Rewards [B, G] from S_pred [N, k] and S_ema [B, k] (per-token gains averaged over k), and
    the group advantages over the batch's valid thoughts, flattened to [N]."""
    b, g = batch.groups
    k = s_ema.shape[1]
    gains = information_gain_reward(
        s_pred.view(b, g, k), s_ema.view(b, 1, k).expand(b, g, k), multi_token=True
    )
    rewards = gains.masked_fill(batch.zero_reward.view(b, g), 0.0)
    valid = batch.valid.view(b, g)
    return ThoughtRewards(rewards, rlp_group_advantages(rewards, valid).reshape(-1), valid)
