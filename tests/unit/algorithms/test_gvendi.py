"""Rademacher projection (determinism, chunking, memory, inner products) and G-Vendi."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from slingshot.algorithms.gvendi import (
    _GOLDEN,
    _WORDS_PER_ROW_LOG2,
    _seed_base,
    _splitmix64,
    _splitmix64_int,
    _word_bytes,
    g_vendi,
    rademacher_project,
    rademacher_rows,
)


def test_rows_match_the_documented_bit_definition():
    # Entry (r, c) = bit c%64 of splitmix64(base(seed) + (r * 2**20 + c//64) * GOLDEN); bit 1 -> -1.
    seed, dim = 42, 200
    s = rademacher_rows(seed, 5, 9, dim)
    assert s.shape == (4, dim)
    for r in range(5, 9):
        for c in (0, 1, 63, 64, 130, 199):
            word = _splitmix64_int(_seed_base(seed) + ((r << _WORDS_PER_ROW_LOG2) + c // 64) * _GOLDEN)
            assert s[r - 5, c].item() == 1 - 2 * ((word >> (c % 64)) & 1), (r, c)
    assert set(s.unique().tolist()) == {-1.0, 1.0}


def test_byte_split_paths_agree():
    words = _splitmix64(torch.arange(-500, 500, dtype=torch.int64).reshape(100, 10) * _GOLDEN)
    fast, portable = _word_bytes(words, native=True), _word_bytes(words, native=False)
    assert torch.equal(fast, portable)
    # least significant byte first
    assert fast[0, 0].item() == words[0, 0].item() & 0xFF
    assert fast[0, 1].item() == (words[0, 0].item() >> 8) & 0xFF


def test_rows_depend_only_on_seed_and_row_index():
    a = rademacher_rows(3, 0, 100, 1024)
    assert torch.equal(rademacher_rows(3, 40, 60, 1024), a[40:60])
    assert torch.equal(rademacher_rows(3, 0, 100, 256), a[:, :256])  # columns do not depend on dim
    assert not torch.equal(rademacher_rows(4, 0, 100, 1024), a)
    # roughly balanced and uncorrelated
    big = rademacher_rows(0, 0, 512, 1024)
    assert abs(big.mean().item()) < 0.01
    assert abs((big[:-1] * big[1:]).mean().item()) < 0.01


def test_projection_equals_explicit_matrix_and_is_normalised():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1000, generator=g, dtype=torch.float64)
    dim = 64
    p = rademacher_project([x], dim=dim, seed=7, block_size=300, normalize=False)
    explicit = x @ rademacher_rows(7, 0, 1000, dim, dtype=torch.float64) / math.sqrt(dim)
    torch.testing.assert_close(p, explicit)
    pn = rademacher_project([x], dim=dim, seed=7, block_size=300)
    torch.testing.assert_close(pn.norm(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(pn, explicit / explicit.norm(dim=1, keepdim=True))
    # a zero gradient stays zero instead of NaN
    assert torch.equal(rademacher_project([torch.zeros(10)], dim=8), torch.zeros(8))


def test_identical_for_any_chunking():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(10_000, generator=g)
    ref = rademacher_project([v], dim=128, seed=5, block_size=1024)
    cuts = [
        [0, 3, 2500, 10_000],  # chunks straddling block boundaries
        [0, 1024, 2048, 5000, 10_000],  # aligned and not
        list(range(0, 10_001, 1000)),
        [0, 1, 2, 3, 9999, 10_000],
    ]
    for c in cuts:
        chunks = [v[a:b] for a, b in zip(c[:-1], c[1:], strict=True)]
        assert torch.equal(rademacher_project(chunks, dim=128, seed=5, block_size=1024), ref), c
    # batched [N, d_i] chunks give the same rows as one-at-a-time (up to matmul rounding)
    x = torch.randn(4, 10_000, generator=g)
    batched = rademacher_project([x[:, :777], x[:, 777:]], dim=128, seed=5, block_size=1024)
    single = torch.stack([rademacher_project([row], dim=128, seed=5, block_size=1024) for row in x])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    # block_size changes only summation order, never the matrix
    torch.testing.assert_close(
        rademacher_project([v], dim=128, seed=5, block_size=333), ref, rtol=1e-5, atol=1e-6
    )


def test_inner_products_preserved_in_expectation():
    """E⟨Pa, Pb⟩ = ⟨a, b⟩ with Var = (|a|²|b|² + ⟨a,b⟩²)/dim (≈ (1 + 0.36)/1024 → std 0.036 for unit a, b).

    (1) over 64 seeds for a fixed pair: std of the mean ≈ 0.036/8 = 0.0046, tolerance 0.02 (> 4σ);
    (2) over 400 pairs with one seed: mean error within 0.01 and the spread within ±30% of theory.
    """
    dim, d = 1024, 2000
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    z = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    b = 0.6 * a + 0.8 * z
    errs = []
    for seed in range(64):
        pa, pb = rademacher_project([torch.stack([a, b])], dim=dim, seed=seed, normalize=False)
        errs.append((pa @ pb - a @ b).item())
    assert abs(sum(errs) / len(errs)) < 0.02

    n = 400
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    zz = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = 0.6 * x + 0.8 * zz
    p = rademacher_project([torch.cat([x, y])], dim=dim, seed=123, normalize=False)
    px, py = p[:n], p[n:]
    true = (x * y).sum(1)
    rel = ((px * py).sum(1) - true) / (x.norm(dim=1) * y.norm(dim=1))
    theory_std = math.sqrt((1 + true.square().mean().item()) / dim)
    assert abs(rel.mean().item()) < 0.01
    assert 0.7 * theory_std < rel.std().item() < 1.3 * theory_std
    # squared norms: E|Px|² = |x|², std sqrt(2/dim) = 0.044
    sq = px.square().sum(1)
    assert abs(sq.mean().item() - 1.0) < 0.01


_CHILD = textwrap.dedent(
    """
    import hashlib, sys, torch
    from slingshot.algorithms.gvendi import rademacher_project, rademacher_rows
    v = torch.sin(torch.arange(50_000, dtype=torch.float32) * 0.37)
    p = rademacher_project([v[:12_345], v[12_345:]], dim=256, seed=2024, block_size=4096)
    rows = rademacher_rows(2024, 49_000, 49_016, 256).to(torch.int8).numpy().tobytes()
    print(p.double().numpy().tobytes().hex(), hashlib.sha256(rows).hexdigest())
    """
)


def test_identical_across_processes():
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    outs = [
        subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, env=env
        ).stdout
        for _ in range(2)
    ]
    assert outs[0] == outs[1]
    # ... and equal to this process (computed with a different chunking)
    import hashlib

    v = torch.sin(torch.arange(50_000, dtype=torch.float32) * 0.37)
    p = rademacher_project([v], dim=256, seed=2024, block_size=4096)
    rows = rademacher_rows(2024, 49_000, 49_016, 256).to(torch.int8).numpy().tobytes()
    assert outs[0].split() == [p.double().numpy().tobytes().hex(), hashlib.sha256(rows).hexdigest()]


_MEM_CHILD = textwrap.dedent(
    """
    import resource, torch
    from slingshot.algorithms.gvendi import rademacher_project
    D, dim = 1_000_000, 1024
    chunks = list(torch.ones(D).split(300_007))  # odd chunk sizes across block boundaries
    rademacher_project([torch.ones(10)], dim=dim)  # warm up allocator/kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = rademacher_project(chunks, dim=dim, seed=0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == (dim,)
    print((after - before) * 1024)
    """
)


def test_never_materialises_the_full_matrix():
    # D = 1e6, dim = 1024: the full matrix would be 4.1 GB in fp32. Peak RSS growth of the
    # projection must stay under 256 MB (the default block is 16 MiB of signs).
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _MEM_CHILD], capture_output=True, text=True, check=True, env=env
    )
    growth = int(out.stdout.split()[-1])
    assert growth < 256 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MiB"


def test_projection_errors():
    with pytest.raises(ValueError, match="empty"):
        rademacher_project([], dim=8)
    with pytest.raises(ValueError, match="D = 0"):
        rademacher_project([torch.zeros(0)], dim=8)
    with pytest.raises(ValueError, match="inconsistent"):
        rademacher_project([torch.zeros(2, 3), torch.zeros(3)], dim=8)


def test_g_vendi_identical_rows_is_one():
    x = torch.tensor([[1.0, 2.0, 3.0]]).repeat(10, 1)
    assert g_vendi(x) == pytest.approx(1.0, abs=1e-9)
    assert g_vendi(x, q=math.inf) == pytest.approx(1.0, abs=1e-9)


def test_g_vendi_orthonormal_rows_is_d():
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert g_vendi(q) == pytest.approx(8.0, rel=1e-9)  # N = d: d×d path
    assert g_vendi(3.0 * q[:3]) == pytest.approx(3.0, rel=1e-9)  # N < d: Gram path, scale-free
    assert g_vendi(q, q=math.inf) == pytest.approx(8.0, rel=1e-9)


def test_g_vendi_hand_example_and_range():
    # rows e1, e1, e2: K = diag(2/3, 1/3)
    # q=1: exp(-(2/3 ln 2/3 + 1/3 ln 1/3)) = exp(0.636514) = 1.889882 ; q=inf: 1 / (2/3) = 1.5
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert g_vendi(x) == pytest.approx(1.889882, rel=1e-6)
    assert g_vendi(x, q=math.inf) == pytest.approx(1.5, rel=1e-9)
    # q = 2: (Σλ²)^-1 = 1 / (4/9 + 1/9) = 1.8
    assert g_vendi(x, q=2) == pytest.approx(1.8, rel=1e-9)
    r = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    assert 1.0 <= g_vendi(r) <= 6.0 and 1.0 <= g_vendi(r[:4]) <= 4.0
    assert g_vendi(r, q=math.inf) <= g_vendi(r)
    with pytest.raises(ValueError, match="zero rows"):
        g_vendi(torch.zeros(2, 3))
