"""pass@k (scalar and vectorised) and strict-majority voting."""

import math

import pytest
import torch

from slingshot.algorithms.metrics import majority_vote, pass_at_k, pass_at_k_array


def test_pass_at_k_hand_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(5, 4, 2) == 1.0  # only 1 wrong sample: any 2 include a correct one
    assert math.isclose(pass_at_k(10, 3, 1), 0.3)  # k = 1 -> c / n
    assert math.isclose(pass_at_k(5, 2, 2), 1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert math.isclose(pass_at_k(4, 1, 2), 1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    # C(999,100)/C(1000,100) = 900/1000 -> 0.1; naive binomials here are ~1e139
    assert math.isclose(pass_at_k(1000, 1, 100), 0.1, rel_tol=1e-9)
    for n, c in ((16, 0), (16, 5), (16, 16)):
        assert math.isclose(pass_at_k(n, c, 1), c / n, abs_tol=1e-15)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k_array([4, 8], [1, 1], 5)


def test_pass_at_k_array_matches_scalar():
    ns, cs = [], []
    for n in (4, 16, 64):
        for c in range(n + 1):
            ns.append(n)
            cs.append(c)
    for k in (1, 2, 4):
        ref = torch.tensor([pass_at_k(n, c, k) for n, c in zip(ns, cs, strict=True)], dtype=torch.float64)
        torch.testing.assert_close(pass_at_k_array(ns, cs, k), ref, rtol=1e-10, atol=1e-12)
    out = pass_at_k_array(16, torch.tensor([0, 8, 16]), 1)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


def test_majority_vote_strict_majority_only():
    assert majority_vote(["4", "4", "5"]) == ("4", 2)
    assert majority_vote(["4", "4", "5", "6"]) == (None, 2)  # 2 of 4 is not a majority
    assert majority_vote(["a", "a", "b", "b"]) == (None, 2)
    assert majority_vote(["4", "4", None]) == ("4", 2)
    assert majority_vote(["4", None, None]) == (None, 1)  # None counts against
    assert majority_vote(["x"]) == ("x", 1)
    assert majority_vote([None, None]) == (None, 0)
    assert majority_vote([]) == (None, 0)
