"""Clipped policy loss: each aggregation, clip fractions and gradients on a hand example."""

import math

import pytest
import torch

from slingshot.algorithms.policy_loss import AGGREGATIONS, behaviour_importance_weights, clipped_policy_loss

EPS_LOW, EPS_HIGH = 0.2, 0.3  # clip range [0.8, 1.3]


def hand_batch():
    """Two sequences, T = 3; old_logp = 0 so ratio = exp(logp).

    seq 0: A = +1, ratios [1.0, 1.5, 0.5], all valid
        per token max(-A r, -A clip(r)):
        r=1.0 -> max(-1.0, -1.0) = -1.0
        r=1.5 -> max(-1.5, -1.3) = -1.3   (clipped: high)
        r=0.5 -> max(-0.5, -0.8) = -0.5
        sum -2.8, mean -2.8/3
    seq 1: A = -2, ratios [0.5, 1.5, pad], 2 valid (pad holds NaN on purpose)
        r=0.5 -> max(1.0, 1.6) = 1.6      (clipped: low)
        r=1.5 -> max(3.0, 2.6) = 3.0
        sum 4.6, mean 2.3
    """
    logp = torch.tensor([[0.0, math.log(1.5), math.log(0.5)], [math.log(0.5), math.log(1.5), float("nan")]])
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return logp, old, adv, mask


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("token-mean", (-2.8 + 4.6) / 5),  # 0.36
        ("seq-mean-token-mean", (-2.8 / 3 + 2.3) / 2),  # 0.683333...
        ("seq-mean-token-sum", (-2.8 + 4.6) / 2),  # 0.9
    ],
)
def test_loss_each_aggregation(agg, expected):
    logp, old, adv, mask = hand_batch()
    out = clipped_policy_loss(logp, old, adv, mask, EPS_LOW, EPS_HIGH, agg)
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-6)


def test_clip_fractions_and_ratio_mean():
    logp, old, adv, mask = hand_batch()
    out = clipped_policy_loss(logp, old, adv, mask, EPS_LOW, EPS_HIGH, "token-mean")
    # 5 valid tokens; one "high" clip (seq 0, r=1.5, A>0), one "low" clip (seq 1, r=0.5, A<0)
    assert math.isclose(out.clip_frac_high.item(), 1 / 5, rel_tol=1e-6)
    assert math.isclose(out.clip_frac_low.item(), 1 / 5, rel_tol=1e-6)
    assert math.isclose(out.clip_frac.item(), 2 / 5, rel_tol=1e-6)
    # ratio mean over valid tokens: (1 + 1.5 + 0.5 + 0.5 + 1.5) / 5 = 1.0
    assert math.isclose(out.ratio_mean.item(), 1.0, rel_tol=1e-6)
    # r=0.5 with A>0 (seq 0) and r=1.5 with A<0 (seq 1) are outside the range but NOT clipped


def test_gradient_hand_values_and_padding_nan_safe():
    logp, old, adv, mask = hand_batch()
    logp.requires_grad_(True)
    out = clipped_policy_loss(logp, old, adv, mask, EPS_LOW, EPS_HIGH, "token-mean")
    out.loss.backward()
    # d(-A r)/dlogp = -A r on unclipped tokens, 0 on clipped ones; / 5 tokens
    # seq 0: [-1*1, clipped, -1*0.5] / 5 ; seq 1: [clipped, 2*1.5, pad] / 5
    expected = torch.tensor([[-0.2, 0.0, -0.1], [0.0, 0.6, 0.0]])
    torch.testing.assert_close(logp.grad, expected)


def test_empty_rows_are_excluded_from_seq_means():
    logp, old, adv, mask = hand_batch()
    logp3 = torch.cat([logp, torch.full((1, 3), float("inf"))])
    old3 = torch.cat([old, torch.zeros(1, 3)])
    adv3 = torch.cat([adv, torch.tensor([5.0])])
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    for agg in AGGREGATIONS:
        a = clipped_policy_loss(logp, old, adv, mask, EPS_LOW, EPS_HIGH, agg).loss
        b = clipped_policy_loss(logp3, old3, adv3, mask3, EPS_LOW, EPS_HIGH, agg).loss
        torch.testing.assert_close(a, b)
    # no valid token at all: loss 0, still differentiable
    x = torch.zeros(2, 3, requires_grad=True)
    out = clipped_policy_loss(
        x, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3), 0.2, 0.2, "seq-mean-token-mean"
    )
    assert out.loss.item() == 0.0 and out.clip_frac.item() == 0.0
    out.loss.backward()
    assert torch.equal(x.grad, torch.zeros(2, 3))


def test_per_token_advantages_equal_broadcast_and_float_mask():
    logp, old, adv, mask = hand_batch()
    a = clipped_policy_loss(logp, old, adv, mask, EPS_LOW, EPS_HIGH, "seq-mean-token-sum")
    b = clipped_policy_loss(
        logp, old, adv[:, None].expand(2, 3), mask.float(), EPS_LOW, EPS_HIGH, "seq-mean-token-sum"
    )
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


def test_log_ratio_is_clamped_to_20():
    # log-ratio 1000 -> clamped to 20; A = -1, no clip on that side: loss = exp(20), finite
    out = clipped_policy_loss(
        torch.tensor([[1000.0]]), torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), 0.2, 0.2
    )
    assert math.isclose(out.loss.item(), math.exp(20), rel_tol=1e-5)


def test_errors():
    logp, old, adv, mask = hand_batch()
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum"):
        clipped_policy_loss(logp, old, adv, mask, 0.2, 0.2, "seq-sum")
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(logp, old, torch.zeros(3), mask, 0.2, 0.2)
    with pytest.raises(ValueError, match="must match"):
        clipped_policy_loss(logp, old[:, :2], adv, mask, 0.2, 0.2)


def test_behaviour_importance_weights_mask_or_truncate_outside_the_bounds():
    # ρ_b = exp(old − behaviour) = [0.25, 0.6, 1, 4, 8] (log-ratios ln of each).
    ratios = torch.tensor([[0.25, 0.6, 1.0, 4.0, 8.0]])
    old = torch.zeros(1, 5)
    behaviour = -torch.log(ratios)
    masked = behaviour_importance_weights(old, behaviour, 0.5, 5.0, "mask")
    assert torch.allclose(masked, torch.tensor([[0.0, 0.6, 1.0, 4.0, 0.0]]))
    truncated = behaviour_importance_weights(old, behaviour, 0.5, 5.0, "truncate")
    assert torch.allclose(truncated, torch.tensor([[0.25, 0.6, 1.0, 4.0, 5.0]]))
    assert behaviour_importance_weights(old, torch.full((1, 5), -30.0), mode="truncate")[0, 0] == 5.0
    assert math.isclose(float(masked.sum()), 5.6, rel_tol=1e-6)


def test_token_weights_multiply_each_tokens_loss_term():
    # ρ = 1, A = 1: each token's term is −1; weights [2, 0, 1] over 3 valid tokens: −3/3.
    logp = torch.zeros(1, 3, requires_grad=True)
    out = clipped_policy_loss(
        logp,
        torch.zeros(1, 3),
        torch.ones(1),
        torch.ones(1, 3, dtype=torch.bool),
        0.2,
        0.2,
        token_weights=torch.tensor([[2.0, 0.0, 1.0]]),
    )
    assert torch.isclose(out.loss, torch.tensor(-1.0))
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.0, 0.0, -1.0]]) / 3)
