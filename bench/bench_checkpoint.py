"""Checkpoint save time: sharded (every rank writes its FSDP2 shards through
torch.distributed.checkpoint, ``slingshot.train.state.TrainState``) vs the former rank-0 full
save (gather model + optimizer to full CPU tensors, ``torch.save`` on rank 0 while the other
ranks wait), for a ~100M-parameter Qwen3 model built from a config (no download) with
AdamW state after one step.

Both write into a fresh directory and fsync what they wrote (DCP syncs its files; the full
save is fsynced after torch.save), between barriers; the time is rank 0's wall clock from
the first barrier to the last, the median of ``--repeats``. Bytes: the files on disk.

    python bench/bench_checkpoint.py                      # 2 gloo ranks on CPU
    python bench/bench_checkpoint.py --ranks 2 --layers 10 --hidden 768 --dir /scratch/x
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def build_model(a: argparse.Namespace) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=3 * a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 64,
        num_key_value_heads=max(1, a.hidden // 192),
        head_dim=64,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(cfg)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def full_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The former TrainState: full state dicts gathered (collective), written by rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    if tdist.get_rank() == 0:
        path.mkdir(parents=True)
        torch.save({"core": {"model": model_sd, "optimizer": optim_sd}}, path / "train_state.pt")
        with open(path / "train_state.pt", "rb") as handle:
            os.fsync(handle.fileno())


def sharded_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    from slingshot.train.state import ModelOptimizerState, TrainState

    if tdist.get_rank() == 0:
        path.mkdir(parents=True)
    tdist.barrier()
    TrainState(tdist.get_rank() == 0, core=ModelOptimizerState(model, optimizer)).save(path)


def worker(rank: int, a: argparse.Namespace, port: int, results: Any) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(a.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=a.ranks)
    model = build_model(a)
    params = sum(p.numel() for p in model.parameters())
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():  # one step: Adam's moments exist, as in any real checkpoint
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    root = Path(a.dir)
    times: dict[str, list[float]] = {"sharded": [], "full": []}
    sizes: dict[str, int] = {}
    for i in range(a.repeats):
        for kind, save in (("sharded", sharded_save), ("full", full_save)):
            path = root / f"{kind}-{i}"
            tdist.barrier()
            start = time.perf_counter()
            save(model, optimizer, path)
            tdist.barrier()
            times[kind].append(time.perf_counter() - start)
            if rank == 0:
                sizes[kind] = dir_bytes(path)
                shutil.rmtree(path)
    if rank == 0:
        results.update(params=params, times=times, sizes=sizes)
    tdist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir under /tmp)")
    a = parser.parse_args()
    tmp = None
    if a.dir is None:
        tmp = tempfile.mkdtemp(prefix="bench-ckpt-")
        a.dir = tmp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(a, port, results), nprocs=a.ranks, join=True)
        r = dict(results)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    sharded, full = statistics.median(r["times"]["sharded"]), statistics.median(r["times"]["full"])
    print(
        f"device cpu (gloo, {a.ranks} ranks x {a.threads} thread, FSDP2); Qwen3 {r['params'] / 1e6:.1f}M "
        f"params ({a.layers} layers x {a.hidden}, vocab {a.vocab}) + AdamW state; median of {a.repeats}"
    )
    print(f"  sharded (DCP, every rank writes):  {sharded:7.2f} s  {r['sizes']['sharded'] / 1e6:8.1f} MB")
    print(f"  rank-0 full (gather + torch.save): {full:7.2f} s  {r['sizes']['full'] / 1e6:8.1f} MB")
    print(f"  full / sharded: {full / sharded:.2f}x")
    print(f"  all times (s): sharded {r['times']['sharded']}, full {r['times']['full']}")


if __name__ == "__main__":
    main()
