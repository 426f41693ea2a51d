"""slingshot.models.sharding on two real gloo ranks: what FSDP2 must give the RL stages."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from slingshot.dist import DistEnv
from slingshot.models.sharding import resolve_parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_auto_shards_on_gpus_and_all_reduces_on_gloo():
    cpu_pair = DistEnv(0, 2, 0, "gloo")
    assert resolve_parallel("auto", cpu_pair) == "allreduce"
    assert resolve_parallel("fsdp", cpu_pair) == "fsdp"
    assert resolve_parallel("allreduce", cpu_pair) == "allreduce"
    assert resolve_parallel("fsdp", DistEnv()) == "none"  # no process group: nothing to shard over
    assert resolve_parallel("fsdp", DistEnv(0, 1, 0, "gloo")) == "fsdp"  # FSDP2 on one GPU


def _batches(rank: int) -> list[torch.Tensor]:
    """Two micro-batches per rank, four in all (rank r holds 2r and 2r+1)."""
    rows = [[1, 2, 3, 4, 5], [5, 6, 7, 8, 9], [9, 10, 11, 12, 1], [3, 3, 2, 1, 7]]
    return [torch.tensor([rows[2 * rank + i]]) for i in range(2)]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    import os
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
    from tiny_hf import tiny_llama

    from slingshot import dist
    from slingshot.models.sharding import (
        full_model,
        full_value,
        gathered_for_generation,
        shard_model,
        sum_sharded_gradients,
    )

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_distributed(timeout_s=60)
    try:
        record: dict = {}
        policy, plain, frozen = tiny_llama(), tiny_llama(), tiny_llama()
        shard_model(policy, torch.device("cpu"))
        shard_model(frozen, torch.device("cpu"), frozen=True)

        # Generation: the ranks stop at different lengths (no collective may run inside), and
        # sample what the unsharded model samples; a second call works the same after it.
        prompt = torch.tensor([[1, 2, 3]])
        kwargs = {"attention_mask": torch.ones_like(prompt), "do_sample": False, "pad_token_id": 0}
        lengths = (4 + 9 * rank, 3)
        for new in lengths:
            with gathered_for_generation(policy):
                got = policy.generate(input_ids=prompt, max_new_tokens=new, eos_token_id=None, **kwargs)
            want = plain.generate(input_ids=prompt, max_new_tokens=new, eos_token_id=None, **kwargs)
            record.setdefault("generated_equal", []).append(torch.equal(got, want))
            record.setdefault("generated_len", []).append(got.shape[1])

        # Gradients: two micro-batches per rank of a loss normalised over all four (each
        # rank's share of the global mean), reduce-scattered then summed: the one-process gradient.
        for ids in _batches(rank):
            (policy(input_ids=ids, labels=ids).loss / 4).backward()
        sum_sharded_gradients(policy, world)
        for r in range(world):
            for ids in _batches(r):
                (plain(input_ids=ids, labels=ids).loss / 4).backward()
        grads = {name: full_value(p.grad) for name, p in policy.named_parameters()}
        record["grad_max_err"] = max(
            float((grads[name] - p.grad).abs().max()) for name, p in plain.named_parameters()
        )
        record["norm"] = (
            dist.clip_grad_norm(policy.parameters(), 0.0),
            dist.clip_grad_norm(plain.parameters(), 0.0),
        )

        # A frozen copy's parameters are shards again after a forward (its root reshards):
        # the EMA update and the reference reset pair them with the policy's shards.
        with torch.no_grad():
            frozen(input_ids=prompt)
        record["frozen_all_sharded"] = all(hasattr(p, "full_tensor") for p in frozen.parameters())
        frozen.load_state_dict(policy.state_dict())  # π_ref ← π_θ, shard by shard
        record["reset_equal"] = all(
            torch.equal(full_value(a), full_value(b))
            for a, b in zip(frozen.parameters(), policy.parameters(), strict=True)
        )

        # A vLLM weight push of the sharded policy: every tensor whole, the tied head too.
        from slingshot.rollout.vllm import engine_weights

        pushed, plain_weights = engine_weights(policy), engine_weights(plain)
        record["pushed_equal"] = pushed.keys() == plain_weights.keys() and all(
            not hasattr(v, "full_tensor") and torch.equal(v, plain_weights[k]) for k, v in pushed.items()
        )
        whole = {k: full_value(v) for k, v in policy.state_dict().items()}  # collective: both ranks
        exported = full_model(policy, rank == 0)  # a collective too
        record["exported"] = None if exported is None else type(exported).__name__
        if exported is not None:
            record["exported_equal"] = all(torch.equal(exported.state_dict()[k], v) for k, v in whole.items())
        out[rank] = record
    finally:
        dist.shutdown_distributed()


def test_sharded_generation_gradients_frozen_copies_and_export_on_two_gloo_ranks():
    world, port = 2, _free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(world, port, out), nprocs=world, start_method="spawn")
        records = dict(out)
    for rank in range(world):
        r = records[rank]
        assert r["generated_equal"] == [True, True]
        assert r["generated_len"] == [3 + 4 + 9 * rank, 3 + 3]
        assert r["grad_max_err"] < 1e-6
        assert r["norm"][0] == pytest.approx(r["norm"][1], rel=1e-5) and r["norm"][1] > 0
        assert r["frozen_all_sharded"] and r["reset_equal"]
        assert r["pushed_equal"]
    assert records[0]["exported"] == "LlamaForCausalLM" and records[0]["exported_equal"]
    assert records[1]["exported"] is None
