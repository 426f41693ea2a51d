"""slingshot.dist: identities in one process, and every collective on two real gloo ranks."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from slingshot import dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_collectives_are_identities():
    assert not dist.is_initialized() and dist.rank() == 0 and dist.world_size() == 1
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce(t, "mean") is t and t.tolist() == [1.0, 2.0]
    assert dist.all_reduce_mean({"a": 1.5}) == {"a": 1.5}
    assert dist.all_reduce_scalar(3.0) == 3.0
    assert dist.any_rank(True) and not dist.any_rank(False)
    assert dist.broadcast_object("x") == "x"
    assert dist.all_gather_objects({"k": 1}) == [{"k": 1}]
    assert dist.gather_objects(3) == [3]
    assert dist.map_sharded(str, [1, 2]) == ["1", "2"]
    dist.barrier()


def test_clip_grad_norm_hand_checked():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert dist.clip_grad_norm([p], 0.0) == pytest.approx(5.0)  # no clipping
    assert p.grad.tolist() == [3.0, 4.0]
    assert dist.clip_grad_norm([p], 1.0) == pytest.approx(5.0)  # norm before clipping
    assert p.grad.tolist() == pytest.approx([0.6, 0.8], abs=1e-6)
    assert dist.clip_grad_norm([torch.nn.Parameter(torch.zeros(1))], 1.0) == 0.0  # no gradients


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env = dist.init_distributed(timeout_s=60)
    try:
        record = {"env": (env.rank, env.world_size, env.backend)}
        t = torch.tensor([float(rank + 1), 10.0 * rank])
        record["sum"] = dist.all_reduce(t.clone(), "sum").tolist()
        record["mean"] = dist.all_reduce(t.clone(), "mean").tolist()
        record["max"] = dist.all_reduce(t.clone(), "max").tolist()
        record["dict_mean"] = dist.all_reduce_mean({"b": float(rank), "a": 2.0 * rank})
        record["any"] = (dist.any_rank(rank == 1), dist.any_rank(False))
        record["broadcast"] = dist.broadcast_object(f"from-{rank}")
        record["gathered"] = dist.all_gather_objects(rank * 7)
        record["gathered_to_first"] = dist.gather_objects(f"r{rank}")
        record["sharded"] = dist.map_sharded(lambda x: (x * x, dist.rank()), list(range(5)))

        model = torch.nn.Linear(2, 1, bias=False)
        model.weight.grad = torch.full((1, 2), float(rank + 1))
        dist.all_reduce_grads(model, "mean")
        record["grad_mean"] = model.weight.grad.flatten().tolist()

        # FSDP2: gradients are DTensor shards; the norm must be the global one on every rank.
        from torch.distributed.fsdp import fully_shard

        torch.manual_seed(0)
        sharded = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 1, bias=False))
        reference = [p.detach().clone() for p in sharded.parameters()]
        fully_shard(sharded)
        x = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8
        sharded(x).sum().backward()
        record["fsdp_norm"] = dist.clip_grad_norm(sharded.parameters(), 0.0)
        # The same gradient computed unsharded in this process (the input is the same on both
        # ranks and FSDP averages gradients over them, so the global gradient is this one).
        w1, w2 = (p.clone().requires_grad_(True) for p in reference)
        (x @ w1.T @ w2.T).sum().backward()
        record["plain_norm"] = float(
            torch.linalg.vector_norm(torch.cat([w1.grad.flatten(), w2.grad.flatten()]))
        )
        out[rank] = record
    finally:
        dist.shutdown_distributed()


def test_collectives_on_two_gloo_ranks():
    world, port = 2, _free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(world, port, out), nprocs=world, start_method="spawn")
        records = dict(out)
    for rank in range(world):
        r = records[rank]
        assert r["env"] == (rank, 2, "gloo")
        assert r["sum"] == [3.0, 10.0]
        assert r["mean"] == [1.5, 5.0]
        assert r["max"] == [2.0, 10.0]
        assert r["dict_mean"] == {"a": 1.0, "b": 0.5}
        assert r["any"] == (True, False)
        assert r["broadcast"] == "from-0"
        assert r["gathered"] == [0, 7]
        assert r["gathered_to_first"] == (["r0", "r1"] if rank == 0 else None)
        # Items 0-2 on rank 0 and 3-4 on rank 1, joined in item order on both ranks.
        assert r["sharded"] == [(0, 0), (1, 0), (4, 0), (9, 1), (16, 1)]
        assert r["grad_mean"] == [1.5, 1.5]
        assert r["fsdp_norm"] == pytest.approx(r["plain_norm"], rel=1e-5)
        assert r["fsdp_norm"] > 0


def test_shard_indices_are_contiguous_balanced_and_cover_every_item():
    assert [list(dist.shard_indices(7, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(dist.shard_indices(2, r, 4)) for r in range(4)] == [[0], [1], [], []]
    assert list(dist.shard_indices(0, 0, 1)) == []
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        dist.shard_indices(5, 2, 2)
