"""Token entropy, the top-q entropy ("forking tokens") mask, and the ε_high controller."""

import math

import pytest
import torch

from slingshot.algorithms.entropy import EntropyController, token_entropy, top_entropy_mask, topk_entropy


def test_token_entropy_hand_values():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf, -math.inf]])
    h = token_entropy(logits)
    # uniform over 4: ln 4 = 1.386294
    # p = [0.25, 0.75, 0, 0]: 0.25 ln 4 + 0.75 ln(4/3) = 0.346574 + 0.215762 = 0.562335 (no NaN from -inf)
    torch.testing.assert_close(h, torch.tensor([math.log(4), 0.25 * math.log(4) + 0.75 * math.log(4 / 3)]))


def test_token_entropy_stable_and_dtype():
    h = token_entropy(torch.tensor([[1000.0, 1000.0], [1e4, 0.0]], dtype=torch.bfloat16))
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, torch.tensor([math.log(2), 0.0]))
    assert token_entropy(torch.zeros(2, 3, 5)).shape == (2, 3)


def test_top_entropy_mask_per_response_with_padding():
    ent = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [0.2, 0.8, 0.4, 9.9, 9.9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = top_entropy_mask(ent, mask, 0.4)
    # row 0: n=5, k=ceil(2.0)=2 -> positions 1 (0.9) and 3 (0.7)
    # row 1: n=3, k=ceil(1.2)=2 -> positions 1 (0.8) and 2 (0.4); padded 9.9s never picked
    assert out.tolist() == [[False, True, False, True, False], [False, True, True, False, False]]


def test_top_entropy_mask_q1_ties_empty_and_rounding():
    ent = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(top_entropy_mask(ent, mask, 1.0), mask)
    # ties -> earlier positions first; empty row selects nothing
    assert top_entropy_mask(ent, mask, 0.5).tolist() == [[True, True, False, False], [False] * 4]
    # 0.7 * 10 = 7.000000000000001 in floating point: still 7 tokens, not 8
    out = top_entropy_mask(torch.arange(10.0).unsqueeze(0), torch.ones(1, 10), 0.7)
    assert out.sum().item() == 7 and out[0, 3:].all()
    # tiny q keeps at least one token of a non-empty response
    assert top_entropy_mask(torch.arange(10.0).unsqueeze(0), torch.ones(1, 10), 0.01).sum().item() == 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_q"):
            top_entropy_mask(ent, mask, bad)


def test_entropy_controller_moves_within_bounds():
    c = EntropyController(
        target_low=1.0, target_high=2.0, eps_high_min=0.2, eps_high_max=0.4, step_size=0.1, eps_high=0.3
    )
    assert c.update(0.5) == pytest.approx(0.4)  # below band -> raise
    assert c.update(0.5) == pytest.approx(0.4)  # capped at max
    assert c.update(1.5) == pytest.approx(0.4)  # inside band -> unchanged
    assert c.update(3.0) == pytest.approx(0.3)  # above band -> lower
    assert c.update(3.0) == pytest.approx(0.2)
    assert c.update(3.0) == pytest.approx(0.2)  # floored at min
    assert c.update(float("nan")) == pytest.approx(0.2)  # non-finite -> unchanged
    assert c.num_updates == 7


def test_entropy_controller_state_round_trip_and_validation():
    cfg = dict(target_low=1.0, target_high=2.0, eps_high_min=0.2, eps_high_max=0.6, step_size=0.05)
    a = EntropyController(**cfg)
    assert a.eps_high == 0.4  # ProRL default start
    for h in (0.1, 0.2, 0.3):
        a.update(h)
    b = EntropyController(**cfg)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert [b.update(h) for h in (0.1, 5.0, 1.2)] == [a.update(h) for h in (0.1, 5.0, 1.2)]
    with pytest.raises(ValueError):
        EntropyController(target_low=2.0, target_high=1.0, eps_high_min=0.2, eps_high_max=0.4, step_size=0.1)
    with pytest.raises(ValueError):
        EntropyController(target_low=1.0, target_high=2.0, eps_high_min=0.5, eps_high_max=0.4, step_size=0.1)


def test_a_relative_band_scales_with_the_first_value_and_survives_a_resume():
    cfg = dict(target_low=0.9, target_high=1.5, eps_high_min=0.2, eps_high_max=0.6, step_size=0.05)
    c = EntropyController(**cfg, relative=True)
    assert c.band() == (-math.inf, math.inf)
    assert c.update(float("nan")) == pytest.approx(0.4) and c.reference is None  # no reference from NaN
    assert c.update(0.0) == pytest.approx(0.4) and c.reference is None  # nor from 0 (a [0, 0] band)
    assert c.update(4.0) == pytest.approx(0.4)  # the first value sets the band: [3.6, 6.0]
    assert c.reference == 4.0 and c.band() == pytest.approx((3.6, 6.0))
    assert c.update(3.7) == pytest.approx(0.4)  # 92.5% of the start: inside
    assert c.update(3.5) == pytest.approx(0.45)  # 87.5%: below, ε_high up
    assert c.update(6.5) == pytest.approx(0.4)  # above 1.5 x 4: down
    resumed = EntropyController(**cfg, relative=True)
    resumed.load_state_dict(c.state_dict())
    assert resumed.reference == 4.0  # the band is not re-anchored to the resumed value
    assert resumed.update(3.0) == c.update(3.0) == pytest.approx(0.45)
    # On the absolute band [0.9, 1.5] the same values are all above it: ε_high only falls.
    absolute = EntropyController(**cfg)
    assert [absolute.update(v) for v in (4.0, 3.7, 3.5)] == pytest.approx([0.35, 0.3, 0.25])


def test_topk_entropy_is_the_entropy_of_the_renormalised_top_k():
    # Logits [ln 2, 0, 0, -5]: the top 3 renormalise to [1/2, 1/4, 1/4], H = 1.5 ln 2; the
    # top 2 to [2/3, 1/3], H = ln 3 − (2/3) ln 2; the top 1 is certain, H = 0.
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0, -5.0]])
    assert torch.allclose(topk_entropy(logits, 3), torch.tensor([1.5 * math.log(2.0)]))
    assert torch.allclose(topk_entropy(logits, 2), torch.tensor([math.log(3.0) - 2 / 3 * math.log(2.0)]))
    assert torch.allclose(topk_entropy(logits, 1), torch.tensor([0.0]))
    # k >= V is the full entropy (the -5 logit adds a little: more than the top 3's).
    assert torch.allclose(topk_entropy(logits, 4), token_entropy(logits))
    assert torch.allclose(topk_entropy(logits, 16), token_entropy(logits))
    assert float(token_entropy(logits)) > 1.5 * math.log(2.0)
