"""GRPO / Dr.GRPO advantages and the dynamic-sampling mask."""

import pytest
import torch

from slingshot.algorithms.grpo import dynamic_sampling_mask, grpo_advantages, reinforce_pp_baseline_advantages


def test_grpo_with_unbiased_std_hand_example():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # mean 0.25; deviations [0.75, -0.25, -0.25, -0.25]; squares sum 0.5625 + 3*0.0625 = 0.75
    # unbiased var 0.75 / 3 = 0.25 -> std 0.5 -> [1.5, -0.5, -0.5, -0.5]
    # (the biased std sqrt(0.75/4) = 0.433 would give 1.732 for the first entry)
    torch.testing.assert_close(grpo_advantages(r, eps=0.0), torch.tensor([[1.5, -0.5, -0.5, -0.5]]))
    torch.testing.assert_close(
        grpo_advantages(r), torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / (0.5 + 1e-6), rtol=1e-6, atol=0
    )


def test_dr_grpo_without_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 5.0, 5.0, 7.0]])
    # row 1: mean 5 -> [-2, 0, 0, 2]
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [-2.0, 0.0, 0.0, 2.0]])
    torch.testing.assert_close(grpo_advantages(r, normalize_std=False), expected)
    a = grpo_advantages(r)
    torch.testing.assert_close(a.sum(1), torch.zeros(2), atol=1e-6, rtol=0)


def test_uniform_group_gets_zero_and_int_rewards_cast():
    a = grpo_advantages(torch.tensor([[1, 1, 1], [0, 1, 1]]))
    assert a.dtype == torch.float32
    assert torch.equal(a[0], torch.zeros(3))
    assert torch.all(torch.isfinite(a))


def test_grpo_errors():
    with pytest.raises(ValueError, match="G >= 2"):
        grpo_advantages(torch.ones(4, 1))
    assert torch.equal(grpo_advantages(torch.ones(4, 1), normalize_std=False), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        grpo_advantages(torch.ones(4))


def test_dynamic_sampling_mask():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.5, 0.5, 0.25]])
    assert dynamic_sampling_mask(r).tolist() == [False, False, True, True]
    assert dynamic_sampling_mask(torch.tensor([[True, False]])).tolist() == [True]


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_normalises_over_the_batch():
    # Group means 0.5 and 2: A = [-0.5, 0.5, -1, 1]; batch mean 0, biased std sqrt(0.625).
    rewards = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    std = 0.625**0.5
    expected = torch.tensor([[-0.5, 0.5], [-1.0, 1.0]]) / (std + 1e-6)
    assert torch.allclose(reinforce_pp_baseline_advantages(rewards), expected)
    # GRPO would give both groups ±0.707: here the wider group's advantages are twice as large.
    # Token weights [1, 1, 2, 0]: weighted mean of A (−0.5 + 0.5 − 2)/4 = −0.5, weighted
    # variance (0 + 1 + 2·0.25 + 0)/4 = 0.375.
    weighted = reinforce_pp_baseline_advantages(rewards, eps=0.0, lengths=torch.tensor([[1, 1], [2, 0]]))
    assert torch.allclose(weighted, (torch.tensor([[-0.5, 0.5], [-1.0, 1.0]]) + 0.5) / 0.375**0.5)
    # All-equal rewards give 0 (0 / (0 + eps)).
    assert torch.equal(reinforce_pp_baseline_advantages(torch.ones(2, 3)), torch.zeros(2, 3))
