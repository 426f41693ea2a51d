"""ProRL step time on N data-parallel ranks vs 1, the same global batch, the same machine.

The run of ``bench_prorl_step.py`` (tiny Llama, digit-share reward, one optimizer step per
generation batch, max_gen_batches=1): once as one process with every thread the ranks
share in all (``--ranks`` threads), once as one process of one thread, once as ``--ranks``
gloo processes of one thread each with whole copies (gradient all-reduce) and once with
FSDP2 (policy and reference sharded; generation on the gathered policy).
Both draw the same samples (rollouts are seeded per prompt), so they do the same work; the
multi-rank run splits generation, scoring and the update by whole groups and adds the
gathers and the gradient all-reduce. The first step is warm-up and not counted. On a
shared CPU box the numbers move with the other load: run it a few times.

    python bench/bench_prorl_ranks.py                          # 2 ranks vs 1, CPU-sized
    python bench/bench_prorl_ranks.py --ranks 2 --prompts 16 --samples 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_prorl_step import _setup, run_prorl  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(a: argparse.Namespace) -> None:
    """One rank (or the single process): run, and rank 0 writes its step times."""
    from slingshot.dist import init_distributed, shutdown_distributed

    torch.set_num_threads(a.threads)
    setup = json.loads(Path(a.setup).read_text())
    setup["model"] = Path(setup["model"])
    dist = init_distributed(timeout_s=600) if a.world > 1 else None
    try:
        times = run_prorl(a, setup, Path(a.root), dist=dist)
    finally:
        shutdown_distributed()
    if dist is None or dist.is_main:
        Path(a.out).write_text(json.dumps(times))


def _launch(
    a: argparse.Namespace,
    setup_path: Path,
    root: Path,
    world: int,
    threads: int,
    name: str = "",
    data_parallel: str = "allreduce",
) -> list[float]:
    name = name or f"{world}x{threads}-{data_parallel}"
    out = root / f"times-{name}.json"
    args = [sys.executable, __file__, "--worker", "--world", str(world), "--threads", str(threads)]
    args += ["--setup", str(setup_path), "--root", str(root / f"run-{name}"), "--out", str(out)]
    for key in ("prompts", "samples", "max_tokens", "steps", "hidden", "layers"):
        args += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
    args += ["--data-parallel", data_parallel]
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(args, env=env))
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"the {world}-process run failed")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    # The worker's own arguments (and the settings run_prorl reads).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--setup", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--data-parallel", default="allreduce", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.temperature, a.eps_low, a.eps_high, a.beta, a.lr = 1.0, 0.2, 0.4, 1e-3, 1e-4
    warnings.filterwarnings("ignore")
    if a.worker:
        return _worker(a)
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    if a.prompts % a.ranks:
        p.error(f"--prompts ({a.prompts}) must divide over --ranks ({a.ranks})")
    with tempfile.TemporaryDirectory(prefix="bench-prorl-ranks-") as tmp:
        root = Path(tmp)
        setup = _setup(a, root)
        setup_path = root / "setup.json"
        setup_path.write_text(json.dumps({**setup, "model": str(setup["model"])}))
        one = _launch(a, setup_path, root, 1, a.ranks)  # one process, all the threads
        single = _launch(a, setup_path, root, 1, 1, "1x1")  # one process, one thread
        many = _launch(a, setup_path, root, a.ranks, 1)  # a thread per rank
        sharded = _launch(a, setup_path, root, a.ranks, 1, data_parallel="fsdp")
    one_s, single_s, many_s, sharded_s = (statistics.mean(t[1:]) for t in (one, single, many, sharded))
    print(
        f"device: CPU ({os.cpu_count()} cores, gloo); B={a.prompts} prompts x G={a.samples}, "
        f"<= {a.max_tokens} response tokens, Llama {a.layers}x{a.hidden}, {a.steps - 1} timed steps"
    )
    for name, times, mean in (
        (f"1 process x {a.ranks} threads", one, one_s),
        ("1 process x 1 thread ", single, single_s),
        (f"{a.ranks} ranks x 1 thread    ", many, many_s),
        (f"{a.ranks} ranks x 1 thread, FSDP2", sharded, sharded_s),
    ):
        print(f"ProRL step, {name}: {mean:.3f} s  (per step: {', '.join(f'{t:.2f}' for t in times[1:])})")
    print(
        f"ratio 1 process x {a.ranks} threads / {a.ranks} ranks: {one_s / many_s:.2f}x (above 1: the ranks are faster)"
    )
    print(f"ratio 1 process x 1 thread / {a.ranks} ranks: {single_s / many_s:.2f}x")
    print(
        f"ratio {a.ranks} ranks all-reduce / FSDP2: {many_s / sharded_s:.2f}x (below 1: sharding costs "
        "gathers; on CPU nothing is gained from the memory it saves)"
    )


if __name__ == "__main__":
    main()
