"""Log-probs at a sampling temperature (SPEC §7), on hand-computed values."""

import math

import pytest
import torch

from slingshot.algorithms.logprobs import IGNORE_INDEX, tempered_logprobs

LN2 = math.log(2.0)


def test_tempered_logprobs_are_log_softmax_of_logits_over_t():
    # logits [0, 2 ln 2]: at T = 1 softmax is [1/5, 4/5]; at T = 2 the logits are [0, ln 2]:
    # softmax [1/3, 2/3]; at T = 0.5 they are [0, 4 ln 2]: [1/17, 16/17].
    logits = torch.tensor([[0.0, 2 * LN2], [0.0, 2 * LN2]])
    targets = torch.tensor([1, 0])
    assert torch.allclose(
        tempered_logprobs(logits, targets), torch.tensor([math.log(4 / 5), math.log(1 / 5)])
    )
    at_2 = tempered_logprobs(logits, targets, temperature=2.0)
    assert torch.allclose(at_2, torch.tensor([math.log(2 / 3), math.log(1 / 3)]))
    at_half = tempered_logprobs(logits, targets, temperature=0.5)
    assert torch.allclose(at_half, torch.tensor([math.log(16 / 17), math.log(1 / 17)]))


def test_tempered_logprobs_ignore_targets_and_carry_gradient():
    logits = torch.tensor([[[0.0, 2 * LN2], [1.0, 1.0]]], requires_grad=True)
    logp = tempered_logprobs(logits, torch.tensor([[1, IGNORE_INDEX]]), temperature=2.0)
    assert logp[0, 1] == 0.0
    logp.sum().backward()
    # d/dz_j log softmax(z/T)_1 = (1[j=1] − p_j) / T with p = [1/3, 2/3], T = 2.
    assert torch.allclose(logits.grad[0, 0], torch.tensor([-1 / 6, 1 / 6]))
    assert torch.equal(logits.grad[0, 1], torch.zeros(2))


def test_tempered_logprobs_refuse_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        tempered_logprobs(torch.zeros(1, 2), torch.tensor([0]), temperature=0.0)
