"""Spherical k-means (cosine similarity) for clustering gradient features (SPEC §3)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["spherical_kmeans", "nearest_centroid"]

_CHUNK_ELEMS = 1 << 24  # rows × k similarities computed at once (64 MiB in fp32)


def _unit_rows(x: Tensor) -> Tensor:
    x = x.detach()
    x = x if x.dtype == torch.float64 else x.float()
    return torch.nn.functional.normalize(x, dim=1)


def _best(x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of unit ``x`` [N, d]: (max cosine to unit ``c`` [k, d], its index), chunked."""
    n = x.shape[0]
    step = max(1, _CHUNK_ELEMS // max(1, c.shape[0]))
    sims, idx = [], []
    for s in range(0, n, step):
        v, i = (x[s : s + step] @ c.T).max(dim=1)
        sims.append(v)
        idx.append(i)
    if not sims:
        return x.new_empty(0), torch.empty(0, dtype=torch.int64, device=x.device)
    return torch.cat(sims), torch.cat(idx)


def nearest_centroid(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the most cosine-similar centroid for each row (ties → lowest index).

    Args:
        x: ``[N, d]``.
        centroids: ``[k, d]`` (normalised here, so need not be unit-norm).

    Returns:
        ``[N]`` int64 in [0, k).
    """
    if x.dim() != 2 or centroids.dim() != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"need x [N, d] and centroids [k, d], got {tuple(x.shape)}, {tuple(centroids.shape)}"
        )
    if centroids.shape[0] == 0:
        raise ValueError("no centroids")
    xu = _unit_rows(x)
    return _best(xu, _unit_rows(centroids).to(xu.dtype))[1]


def _kmeanspp_init(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ on cosine distance 1 − cos: next centre sampled ∝ distance² to the nearest one."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen).item())
    chosen = [first]
    best_sim = x @ x[first]
    for _ in range(1, k):
        w = (1.0 - best_sim).clamp_min(0).double().square()
        w[chosen] = 0.0
        if float(w.sum()) > 0:
            nxt = int(torch.multinomial(w.cpu(), 1, generator=gen).item())
        else:
            # All remaining points coincide with a centre: take the lowest unused index.
            used = torch.zeros(n, dtype=torch.bool)
            used[chosen] = True
            nxt = int((~used).nonzero()[0].item())
        chosen.append(nxt)
        best_sim = torch.maximum(best_sim, x @ x[nxt])
    return x[chosen].clone()


def spherical_kmeans(x: Tensor, k: int, iters: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Spherical k-means: rows are unit-normalised, similarity is cosine, centroids are unit.

    Init is k-means++ (on 1 − cos) with a CPU ``torch.Generator`` seeded by ``seed``, so the
    result is deterministic. Each iteration assigns every point to its most similar
    centroid, then sets each centroid to its members' normalised mean. An empty cluster is
    re-seeded with the point farthest from its own centroid (lowest similarity; ties →
    lowest index; each such point used once). Stops early when assignments stop changing.

    Args:
        x: ``[N, d]`` features (e.g. projected gradients), N ≥ k.
        k: number of clusters, 1 ≤ k ≤ N.
        iters: maximum Lloyd iterations (SPEC: 20).
        seed: init seed.

    Returns:
        (centroids ``[k, d]`` unit-norm, assignments ``[N]`` int64) — the assignments are
        the nearest centroids of the returned centroids.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [N, d], got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= N, got k={k}, N={n}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    xu = _unit_rows(x)
    gen = torch.Generator().manual_seed(seed)
    centroids = _kmeanspp_init(xu, k, gen)
    sims, assign = _best(xu, centroids)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, assign, xu)
        counts = torch.bincount(assign, minlength=k)
        new_c = torch.nn.functional.normalize(sums, dim=1)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():
            # Farthest points from their centroids, distinct, deterministic (stable sort).
            far = torch.sort(sims, stable=True).indices[: empty.numel()]
            new_c[empty] = xu[far]
        # A cluster whose members sum to ~0 (antipodal points) keeps its old centroid.
        degenerate = (sums.norm(dim=1) == 0) & (counts > 0)
        new_c[degenerate] = centroids[degenerate]
        centroids = new_c
        sims, new_assign = _best(xu, centroids)
        converged = torch.equal(new_assign, assign)
        assign = new_assign
        if converged:
            break
    return centroids, assign
