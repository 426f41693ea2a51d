"""Gradient-feature projection and the G-Vendi diversity score (Prismatic synthesis, SPEC §3).

``rademacher_project`` maps a flattened gradient of dimension D (given as an iterable of
chunks, e.g. one per parameter tensor) to ``dim`` features with a D×dim random ±1 matrix
that is never materialised. ``g_vendi`` is the exponentiated eigen-entropy of the features'
covariance.

The random matrix
-----------------
Entry (r, c) of the sign matrix S is bit ``c % 64`` of the 64-bit word
``splitmix64(base(seed) + (r * 2**20 + c // 64) * GOLDEN)``, bit 1 → −1 and bit 0 → +1.
So a row depends only on (seed, global row index r) — not on how the input is chunked,
not on ``block_size`` and not on the process. The hash is plain wrapping int64 arithmetic
(no RNG state), so it is meant to give the same bits on CUDA too (checked on CPU only so
far); a ``torch.Generator`` per block would instead tie the matrix to CPU generation and to
a fixed block granularity. Column c does not depend on ``dim`` either:
the first 256 columns of a dim=1024 matrix are the dim=256 matrix.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["rademacher_rows", "rademacher_project", "g_vendi"]

_MASK64 = (1 << 64) - 1
_WORDS_PER_ROW_LOG2 = 20  # 2**20 words of 64 bits per row: dim up to 2**26
_MAX_DIM = 64 << _WORDS_PER_ROW_LOG2
DEFAULT_BLOCK_SIZE = 4096  # rows of S per step: 4096 × 1024 × 4 B = 16 MiB of signs


def _signed64(v: int) -> int:
    """Python int → the int64 with the same low 64 bits (torch has no wrapping uint64 math)."""
    v &= _MASK64
    return v - (1 << 64) if v >= (1 << 63) else v


_GOLDEN = _signed64(0x9E3779B97F4A7C15)
_M1 = _signed64(0xBF58476D1CE4E5B9)
_M2 = _signed64(0x94D049BB133111EB)


def _splitmix64_int(x: int) -> int:
    """Reference splitmix64 finaliser on Python ints (unsigned 64-bit)."""
    x &= _MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _lsr(x: Tensor, s: int) -> Tensor:
    # torch's >> on int64 is arithmetic; mask off the sign-extended bits for a logical shift.
    return (x >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(x: Tensor) -> Tensor:
    """splitmix64 finaliser on an int64 tensor (wrapping arithmetic, same bits as the int version)."""
    x = x ^ _lsr(x, 30)
    x = x * _M1
    x = x ^ _lsr(x, 27)
    x = x * _M2
    return x ^ _lsr(x, 31)


def _seed_base(seed: int) -> int:
    return _signed64(_splitmix64_int(_signed64(seed) + _GOLDEN))


# byte value → its 8 bits as signs (bit j of the byte is column j): [256, 8]
_SIGN_TABLE_CACHE: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _sign_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    key = (device, dtype)
    if key not in _SIGN_TABLE_CACHE:
        v = torch.arange(256).unsqueeze(1)
        bits = (v >> torch.arange(8).unsqueeze(0)) & 1
        _SIGN_TABLE_CACHE[key] = (1 - 2 * bits).to(device=device, dtype=dtype)
    return _SIGN_TABLE_CACHE[key]


def _word_bytes(words: Tensor, *, native: bool = sys.byteorder == "little") -> Tensor:
    """``[R, W]`` int64 → ``[R, W * 8]`` int32 byte values, least significant byte first.

    On little-endian hosts (x86, ARM, CUDA) reinterpreting the words as bytes already gives
    that order and is ~2x faster than shifting; elsewhere the bytes are extracted with
    shifts. Both give the same values (tested).
    """
    if native:
        return words.contiguous().view(torch.uint8).to(torch.int32)
    shifts = torch.arange(0, 64, 8, device=words.device, dtype=torch.int64)
    return ((words.unsqueeze(-1) >> shifts) & 0xFF).reshape(words.shape[0], -1).to(torch.int32)


def rademacher_rows(
    seed: int,
    row_start: int,
    row_stop: int,
    dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Rows ``row_start:row_stop`` of the (unscaled) ±1 matrix S for ``seed``.

    Returns:
        Tensor ``[row_stop - row_start, dim]`` of ±1 in ``dtype`` on ``device``.
        ``rademacher_project`` uses exactly these rows, scaled by 1/sqrt(dim).
    """
    if not 0 < dim <= _MAX_DIM:
        raise ValueError(f"dim must be in 1..{_MAX_DIM}, got {dim}")
    if not 0 <= row_start <= row_stop:
        raise ValueError(f"need 0 <= row_start <= row_stop, got {row_start}, {row_stop}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    n_words = (dim + 63) // 64
    rows = torch.arange(row_start, row_stop, device=device, dtype=torch.int64).unsqueeze(1)
    words_idx = torch.arange(n_words, device=device, dtype=torch.int64).unsqueeze(0)
    counter = (rows << _WORDS_PER_ROW_LOG2) + words_idx  # global word index, independent of dim
    words = _splitmix64(_seed_base(seed) + counter * _GOLDEN)  # [rows, n_words] int64
    byte_vals = _word_bytes(words)  # [rows, n_words * 8], byte j of word w = bits 8j..8j+7
    # One gather of 8 signs per byte instead of 64 shift/and passes per word.
    signs = torch.nn.functional.embedding(byte_vals, _sign_table(device, dtype))  # [rows, n_words * 8, 8]
    return signs.reshape(rows.shape[0], n_words * 64)[:, :dim]


def rademacher_project(
    grad_chunks: Iterable[Tensor],
    dim: int = 1024,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    normalize: bool = True,
) -> Tensor:
    """Project a flattened gradient with a D×dim Rademacher matrix / sqrt(dim), block by block.

    Args:
        grad_chunks: consecutive pieces of the flattened gradient(s), in a fixed order (e.g.
            one per parameter, ``p.grad.reshape(-1)``). Either all 1-D ``[d_i]`` (one vector)
            or all 2-D ``[N, d_i]`` (N vectors projected at once, which amortises the sign
            generation); D = Σ d_i. Chunk boundaries are arbitrary: the result is bitwise
            identical for any chunking of the same vector (input is re-blocked on global row
            boundaries before each matmul). Any float dtype; computed in float32 (or float64
            if the input is float64) on the first chunk's device.
        dim: output dimension.
        seed: selects the matrix; the same seed gives the same matrix in any process/device.
        block_size: rows of S generated per step. Peak extra memory is
            O(block_size × dim) (signs + byte indices) + O(N × block_size); changes
            only speed and floating-point summation order, never the matrix.
        normalize: L2-normalise each output row (the SPEC feature); False returns the raw
            projection P x, whose inner products are unbiased: E⟨Px, Py⟩ = ⟨x, y⟩.

    Returns:
        ``[dim]`` for 1-D chunks, ``[N, dim]`` for 2-D chunks. A zero gradient stays zero.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not 0 < dim <= _MAX_DIM:
        raise ValueError(f"dim must be in 1..{_MAX_DIM}, got {dim}")
    out: Tensor | None = None
    buf: Tensor | None = None
    fill = 0  # valid columns in buf
    block_idx = 0  # global block index of buf
    batched: bool | None = None
    total = 0  # D seen so far

    def flush() -> None:
        nonlocal out, fill, block_idx
        assert buf is not None and out is not None
        if fill:
            start = block_idx * block_size
            signs = rademacher_rows(seed, start, start + fill, dim, device=buf.device, dtype=buf.dtype)
            out.addmm_(buf[:, :fill], signs)
        fill = 0
        block_idx += 1

    for chunk in grad_chunks:
        if batched is None:
            if chunk.dim() not in (1, 2):
                raise ValueError(f"chunks must be 1-D [d] or 2-D [N, d], got shape {tuple(chunk.shape)}")
            batched = chunk.dim() == 2
            n = chunk.shape[0] if batched else 1
            dtype = torch.float64 if chunk.dtype == torch.float64 else torch.float32
            buf = torch.empty(n, block_size, device=chunk.device, dtype=dtype)
            out = torch.zeros(n, dim, device=chunk.device, dtype=dtype)
        assert buf is not None
        if chunk.dim() != (2 if batched else 1) or (batched and chunk.shape[0] != buf.shape[0]):
            raise ValueError(f"inconsistent chunk shape {tuple(chunk.shape)}; first chunk fixed N/rank")
        c = chunk.detach().reshape(buf.shape[0], -1)
        pos, width = 0, c.shape[1]
        total += width
        while pos < width:  # a chunk may straddle any number of block boundaries
            take = min(width - pos, block_size - fill)
            buf[:, fill : fill + take].copy_(c[:, pos : pos + take])
            fill += take
            pos += take
            if fill == block_size:
                flush()
    if out is None:
        raise ValueError("grad_chunks is empty: nothing to project")
    flush()
    if total == 0:
        raise ValueError("the gradient has dimension D = 0")
    out.mul_(1.0 / math.sqrt(dim))
    if normalize:
        # F.normalize semantics: a zero row stays zero instead of becoming NaN.
        out = torch.nn.functional.normalize(out, dim=1)
    return out if batched else out[0]


def g_vendi(features: Tensor, q: float = 1) -> float:
    """G-Vendi score of a set of feature vectors (SPEC §3).

    Rows are L2-normalised, K = XᵀX / N (d×d); when N < d the N×N Gram XXᵀ/N is used instead
    (same nonzero eigenvalues, cheaper). λ = eigvalsh(K) with tiny negatives clipped to 0, and

    * q = 1: exp(−Σ λ log λ) (0 log 0 = 0), the exponentiated Shannon entropy;
    * q = inf: 1 / max λ;
    * other q > 0: (Σ λ^q)^(1/(1−q)), the order-q Vendi score.

    Everything is in float64. The score ranges from 1 (all rows parallel) to min(N, d)
    (orthonormal rows).

    Args:
        features: ``[N, d]``, N ≥ 1, no zero rows (a zero row has no direction: filter it).
        q: order of the score.

    Returns:
        The score as a Python float.
    """
    if features.dim() != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features must be [N, d] with N, d >= 1, got {tuple(features.shape)}")
    if not (q > 0):
        raise ValueError(f"q must be > 0 (or inf), got {q}")
    x = features.detach().to(torch.float64)
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("features contain zero rows; they have no direction and must be filtered")
    x = x / norms
    n, d = x.shape
    k = (x @ x.T) / n if n < d else (x.T @ x) / n
    lam = torch.linalg.eigvalsh(k).clamp_min(0.0)
    lam = lam / lam.sum()  # trace is 1 up to rounding; renormalise so the score is exact at the ends
    if math.isinf(q):
        return float(1.0 / lam.max())
    if q == 1:
        pos = lam[lam > 0]
        return float(torch.exp(-(pos * pos.log()).sum()))
    return float(lam[lam > 0].pow(q).sum().pow(1.0 / (1.0 - q)))
