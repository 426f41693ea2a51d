"""Benchmark: chunked Rademacher projection vs a naive one that materialises the D×dim matrix.

Gradient-feature-like input: a flattened "gradient" of dimension D given as one chunk per
parameter tensor (uneven sizes, like a small transformer's parameters). Each method runs in
its own subprocess so its peak-RSS growth (ru_maxrss) is measured cleanly.

* chunked: ``slingshot.algorithms.rademacher_project`` — regenerates the signs block by block
  on every call (O(block_size × dim) extra memory).
* naive: builds the full D×dim ±1 matrix once (the SAME matrix, so outputs are compared),
  then one ``x @ M`` per call. Its one-time build is reported separately and amortised.

Throughput is vectors/s for N = 1 (one sample's gradient per call, as SPEC §3 computes them)
and N = 32 (a batch of gradients per call).

Usage: python bench/bench_gvendi_projection.py [--D 2000000] [--dim 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time


def _chunk_sizes(d: int) -> list[int]:
    """Uneven chunk sizes summing to d, like parameter tensors (embedding, qkv, mlp, norms)."""
    pattern = [131_072, 49_152, 512, 65_536, 180_224, 512, 90_112]
    sizes, total, i = [], 0, 0
    while total < d:
        s = min(pattern[i % len(pattern)], d - total)
        sizes.append(s)
        total += s
        i += 1
    return sizes


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _worker(mode: str, d: int, dim: int, n: int, reps: int, threads: int) -> dict:
    import torch

    from slingshot.algorithms.gvendi import DEFAULT_BLOCK_SIZE, rademacher_project, rademacher_rows

    torch.set_num_threads(threads)
    seed = 0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    sizes = _chunk_sizes(d)
    chunks = list(x.split(sizes, dim=1)) if n > 1 else list(x[0].split(sizes))
    rademacher_project([torch.ones(8)], dim=dim)  # warm-up kernels outside the measurement
    base = _rss_peak_bytes()
    result: dict = {"mode": mode, "n": n}
    if mode == "chunked":
        t0 = time.perf_counter()
        for _ in range(reps):
            out = rademacher_project(chunks, dim=dim, seed=seed, normalize=False)
        dt = (time.perf_counter() - t0) / reps
        result.update(call_s=dt, setup_s=0.0)
    else:
        t0 = time.perf_counter()
        m = torch.empty(d, dim)
        for s in range(0, d, DEFAULT_BLOCK_SIZE):  # fill in blocks so peak ≈ the matrix itself
            e = min(s + DEFAULT_BLOCK_SIZE, d)
            m[s:e] = rademacher_rows(seed, s, e, dim)
        m.mul_(1.0 / math.sqrt(dim))
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(reps):
            flat = torch.cat(chunks, dim=-1)  # the naive path needs the flat vector too
            out = flat.reshape(n, d) @ m
        dt = (time.perf_counter() - t0) / reps
        result.update(call_s=dt, setup_s=setup)
    result["peak_extra_bytes"] = _rss_peak_bytes() - base
    result["checksum"] = out.reshape(n, dim)[0, :8].tolist()
    return result


def _device() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--D", type=int, default=2_000_000, help="gradient dimension")
    ap.add_argument("--dim", type=int, default=256, help="projection dimension")
    # 1 by default: on a shared 2-core box, 2 OpenMP threads stall whenever the other core is
    # busy (measured 5-10x slower small elementwise ops), which would benchmark the neighbours.
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--worker", nargs=4, metavar=("MODE", "N", "REPS", "_"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, n, reps, _ = args.worker
        print(json.dumps(_worker(mode, args.D, args.dim, int(n), int(reps), args.threads)))
        return

    import torch

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    full_gb = args.D * args.dim * 4 / 1e9
    print(f"device: {_device()}; torch {torch.__version__}; threads={args.threads}")
    print(
        f"D={args.D:,}  dim={args.dim}  chunks={len(_chunk_sizes(args.D))}  full fp32 matrix = {full_gb:.2f} GB"
    )
    rows = {}
    for n, reps in ((1, 3), (32, 2)):
        for mode in ("chunked", "naive"):
            cmd = [sys.executable, __file__, "--D", str(args.D), "--dim", str(args.dim)]
            cmd += ["--threads", str(args.threads), "--worker", mode, str(n), str(reps), "x"]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rows[(mode, n)] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'method':<9}{'N':>4}{'vectors/s':>12}{'s/call':>9}{'setup s':>9}{'peak extra MiB':>16}")
    for (mode, n), r in rows.items():
        vps = n / r["call_s"]
        mib = r["peak_extra_bytes"] / 2**20
        print(f"{mode:<9}{n:>4}{vps:>12.2f}{r['call_s']:>9.3f}{r['setup_s']:>9.2f}{mib:>16.1f}")
    for n in (1, 32):
        c, v = rows[("chunked", n)], rows[("naive", n)]
        same = all(
            math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4)
            for a, b in zip(c["checksum"], v["checksum"], strict=True)
        )
        speed = v["call_s"] / c["call_s"]
        amort = (v["call_s"] + v["setup_s"]) / c["call_s"]  # naive paying its build once for one call
        mem = v["peak_extra_bytes"] / max(c["peak_extra_bytes"], 1)
        print(
            f"N={n:>2}: chunked/naive throughput = {speed:.3f}x (steady state), "
            f"{amort:.2f}x if the naive build is paid for one call; "
            f"naive/chunked peak memory = {mem:.1f}x; outputs agree: {same}"
        )


if __name__ == "__main__":
    main()
