"""RLP reward, leave-one-out advantages, EMA teacher update and parameter distance."""

import math

import pytest
import torch

from slingshot.algorithms.rlp import (
    ema_update_,
    information_gain_reward,
    parameter_distance,
    rlp_group_advantages,
)


def test_information_gain_reward_hand_values_and_no_grad():
    s_pred = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    s_ema = torch.tensor([-1.5, -1.5, -1.5], requires_grad=True)
    r = information_gain_reward(s_pred, s_ema)
    # -1 - (-1.5) = 0.5 ; -2 - (-1.5) = -0.5 ; -0.5 - (-1.5) = 1.0
    assert torch.equal(r, torch.tensor([0.5, -0.5, 1.0]))
    assert not r.requires_grad


def test_information_gain_reward_multi_token_averages_last_dim():
    # two thoughts, k = 2 target tokens each
    s_pred = torch.tensor([[-1.0, -2.0], [-3.0, -1.0]])
    s_ema = torch.tensor([[-2.0, -4.0], [-2.0, -2.0]])
    # gains [[1, 2], [-1, 1]] -> means [1.5, 0.0]
    r = information_gain_reward(s_pred, s_ema, multi_token=True)
    assert torch.equal(r, torch.tensor([1.5, 0.0]))
    # without the flag the shape is kept (k = 1 semantics per element)
    assert information_gain_reward(s_pred, s_ema).shape == (2, 2)


def test_information_gain_reward_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        information_gain_reward(torch.zeros(2, 3), torch.zeros(2, 1))


def test_rlp_group_advantages_hand_example():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 4.0, 4.0, 6.0]])
    a = rlp_group_advantages(r)
    # row 0: mean 0.25, r - mean = [0.75, -0.25, -0.25, -0.25], x 4/3 -> [1, -1/3, -1/3, -1/3]
    # row 1: mean 4, r - mean = [-2, 0, 0, 2], x 4/3 -> [-8/3, 0, 0, 8/3]
    expected = torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [-8 / 3, 0.0, 0.0, 8 / 3]])
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(a.sum(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    # equals the leave-one-out baseline: r_i - mean_{j != i} r_j (row 0, i = 0: 1 - 0 = 1)
    loo = torch.stack([r[:, i] - torch.cat([r[:, :i], r[:, i + 1 :]], 1).mean(1) for i in range(4)], 1)
    torch.testing.assert_close(a, loo)


def test_rlp_group_advantages_over_valid_thoughts_only():
    # Group 0: thoughts 0-2 valid, mean 2, n/(n-1) = 1.5; the excluded 10 moves nothing.
    # Group 1: one valid thought, no baseline: all 0.
    rewards = torch.tensor([[1.0, 2.0, 3.0, 10.0], [5.0, 1.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, False, False, False]])
    adv = rlp_group_advantages(rewards, valid)
    assert adv.tolist() == [[-1.5, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    everything = torch.ones_like(valid)
    assert torch.equal(rlp_group_advantages(rewards, everything), rlp_group_advantages(rewards))
    with pytest.raises(ValueError, match="valid"):
        rlp_group_advantages(rewards, valid[:, :2])


def test_rlp_group_advantages_g2_and_errors():
    # G = 2: factor 2 -> [[2*(1-2), 2*(3-2)]] = [[-2, 2]]
    torch.testing.assert_close(rlp_group_advantages(torch.tensor([[1.0, 3.0]])), torch.tensor([[-2.0, 2.0]]))
    with pytest.raises(ValueError, match="G >= 2"):
        rlp_group_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        rlp_group_advantages(torch.zeros(4))


def test_ema_update_matches_tau_exactly():
    ema = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    pol = [torch.tensor([3.0, -2.0]), torch.tensor([[10.0]])]
    ema_update_(ema, pol, tau=0.9)
    # 0.9*1 + 0.1*3 = 1.2 ; 0.9*2 + 0.1*(-2) = 1.6 ; 0.9*0 + 0.1*10 = 1.0
    torch.testing.assert_close(ema[0], torch.tensor([1.2, 1.6]))
    torch.testing.assert_close(ema[1], torch.tensor([[1.0]]))
    assert torch.equal(pol[0], torch.tensor([3.0, -2.0]))  # source untouched


def test_ema_update_on_modules_in_place_and_extremes():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in teacher.parameters()]
    ids = [id(p) for p in teacher.parameters()]
    tau = 0.999
    ema_update_(teacher.parameters(), student.parameters(), tau)
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t.detach(), tau * b + (1 - tau) * s.detach(), rtol=1e-6, atol=1e-7)
    assert [id(p) for p in teacher.parameters()] == ids
    assert all(p.requires_grad for p in teacher.parameters())
    # tau = 1 keeps, tau = 0 copies
    keep = [p.detach().clone() for p in teacher.parameters()]
    ema_update_(teacher.parameters(), student.parameters(), 1.0)
    assert all(torch.equal(a, b.detach()) for a, b in zip(keep, teacher.parameters(), strict=True))
    ema_update_(teacher.parameters(), student.parameters(), 0.0)
    assert all(
        torch.equal(a.detach(), b.detach())
        for a, b in zip(teacher.parameters(), student.parameters(), strict=True)
    )


def test_ema_update_casts_bf16_policy_into_fp32_teacher():
    ema = [torch.zeros(3)]
    ema_update_(ema, [torch.full((3,), 2.0, dtype=torch.bfloat16)], tau=0.75)
    torch.testing.assert_close(ema[0], torch.full((3,), 0.5))  # 0.25 * 2


def test_ema_update_errors():
    with pytest.raises(ValueError, match="tau"):
        ema_update_([torch.zeros(1)], [torch.zeros(1)], 1.5)
    with pytest.raises(ValueError, match="tensors"):
        ema_update_([torch.zeros(1)], [], 0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.5)


def test_parameter_distance_hand_value():
    a = [torch.tensor([3.0, 0.0]), torch.tensor([[1.0]])]
    b = [torch.tensor([0.0, 0.0]), torch.tensor([[-3.0]])]
    # diff [3, 0] and [4] -> sqrt(9 + 16) = 5
    d = parameter_distance(a, b)
    assert d.dim() == 0
    assert math.isclose(d.item(), 5.0, rel_tol=1e-6)
    assert parameter_distance(a, a).item() == 0.0
