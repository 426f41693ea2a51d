"""k1 / k2 / k3 KL estimators on hand values."""

import math

import pytest
import torch

from slingshot.algorithms.kl import kl_penalty


def test_hand_values():
    logp = torch.tensor([0.0, -2.0, -1.0])
    ref = torch.tensor([-1.0, -1.0, -1.0])
    # d = logp - ref = [1, -1, 0]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5, 0.0]))
    # k3 = exp(-d) + d - 1: d=1 -> e^-1 = 0.367879; d=-1 -> e - 2 = 0.718282; d=0 -> 0
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([math.exp(-1), math.e - 2, 0.0]))


def test_k3_clamps():
    # ref - logp = -50 -> clamped to -10: e^-10 + 10 - 1 = 9.0000454 (under the +10 cap)
    # ref - logp = +50 -> clamped to 10: e^10 - 11 = 22015.5 -> result capped at 10
    k3 = kl_penalty(torch.tensor([0.0, -50.0]), torch.tensor([-50.0, 0.0]), "k3")
    torch.testing.assert_close(k3, torch.tensor([math.exp(-10) + 9.0, 10.0]))


def test_k3_nonnegative_and_close_to_k2_for_small_differences():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(1000, generator=g, dtype=torch.float64) * 3
    ref = torch.randn(1000, generator=g, dtype=torch.float64) * 3
    assert torch.all(kl_penalty(logp, ref, "k3") >= 0)
    small = ref + torch.randn(1000, generator=g, dtype=torch.float64) * 1e-3
    # k3 = d^2/2 - d^3/6 + ... -> relative gap to k2 ~ |d|/3 <= ~1.5e-3
    torch.testing.assert_close(
        kl_penalty(small, ref, "k3"), kl_penalty(small, ref, "k2"), rtol=5e-3, atol=1e-12
    )


def test_k1_and_k3_are_unbiased_in_expectation():
    # p = [0.5, 0.5] (policy, tokens sampled from it), q = [0.25, 0.75] (reference)
    # KL(p||q) = 0.5 ln 2 + 0.5 ln(2/3) = 0.143841
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    q = torch.tensor([0.25, 0.75], dtype=torch.float64)
    kl = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    for kind in ("k1", "k3"):
        est = (p * kl_penalty(p.log(), q.log(), kind)).sum().item()
        assert math.isclose(est, kl, rel_tol=1e-12), kind


def test_gradient_flows_to_logp_only_and_unknown_kind():
    logp = torch.tensor([0.5], requires_grad=True)
    ref = torch.tensor([0.0], requires_grad=True)
    kl_penalty(logp, ref, "k2").sum().backward()
    assert math.isclose(logp.grad.item(), 0.5) and ref.grad is None  # d/dlogp ½d² = d
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")
