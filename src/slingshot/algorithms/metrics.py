"""Evaluation metrics: unbiased pass@k (SPEC §6) and strict-majority voting (SPEC §3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["pass_at_k", "pass_at_k_array", "majority_vote"]


def _check(n: int, c: int, k: int) -> None:
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and k >= 1, got n={n}, k={k}")
    if k > n:
        raise ValueError(f"pass@k needs k <= n samples, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k) / C(n, k) from n samples of which c are correct.

    Uses the stable product form C(n−c, k)/C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i) (no huge
    binomials). c = 0 → 0; n − c < k (incl. c = n) → 1; k = 1 → c/n.

    Raises:
        ValueError: k > n, c outside [0, n], or n, k < 1.
    """
    _check(n, c, k)
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_array(n: Tensor | Sequence[int] | int, c: Tensor | Sequence[int], k: int) -> Tensor:
    """Vectorised ``pass_at_k`` over problems (float64).

    Computes C(n−c, k)/C(n, k) = exp(lgamma(n−c+1) − lgamma(n−c−k+1) − lgamma(n+1) +
    lgamma(n−k+1)) elementwise; matches ``pass_at_k`` to ~1e-12.

    Args:
        n: ``[P]`` samples per problem, or one int for all.
        c: ``[P]`` correct samples per problem.
        k: the k of pass@k (≤ every n).

    Returns:
        ``[P]`` float64 pass@k per problem (take ``.mean()`` for the benchmark score).
    """
    n_t, c_t = torch.broadcast_tensors(
        torch.as_tensor(n, dtype=torch.float64), torch.as_tensor(c, dtype=torch.float64)
    )
    if k < 1 or bool((n_t < 1).any()):
        raise ValueError(f"need k >= 1 and every n >= 1, got k={k}")
    if bool((n_t < k).any()):
        raise ValueError(f"pass@k needs k <= n for every problem, got k={k}, min n={int(n_t.min())}")
    if bool(((c_t < 0) | (c_t > n_t)).any()):
        raise ValueError("need 0 <= c <= n for every problem")
    m = n_t - c_t  # wrong samples
    all_fail = m >= k
    m_safe = torch.where(all_fail, m, torch.full_like(m, float(k)))  # keep lgamma args > 0
    log_ratio = (
        torch.lgamma(m_safe + 1)
        - torch.lgamma(m_safe - k + 1)
        - torch.lgamma(n_t + 1)
        + torch.lgamma(n_t - k + 1)
    )
    return torch.where(all_fail, -torch.expm1(log_ratio), torch.ones_like(m))


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """The answer given by a STRICT majority (> half) of all solutions, if any.

    ``None`` (no parseable answer) counts toward the total, i.e. as a vote against. Answers
    are compared exactly: normalise them (strip, canonicalise) before calling.

    Returns:
        (answer, count) where answer is the strict-majority answer or ``None``, and count is
        the number of votes of the most common non-None answer (0 if there is none).
        E.g. ["4", "4", "5"] → ("4", 2); ["4", "4", "5", "6"] → (None, 2).
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0
    # most_common breaks ties by first occurrence; a strict majority is unique anyway.
    answer, count = counts.most_common(1)[0]
    return (answer if 2 * count > len(answers) else None), count
