"""What only a GPU exercises: device placement, bf16 autocast, FSDP2 and NCCL on CUDA.

Skipped where no CUDA device exists (tests/conftest.py); bench/gpu/check.py runs them on
the GPU machine."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from tiny_hf import tiny_llama

pytestmark = pytest.mark.gpu


@pytest.fixture
def process_group_of_one():
    """A default group of one rank with the stages' GPU backend (gloo for CPU, NCCL for CUDA)."""
    from slingshot.dist import GPU_BACKEND, DistEnv

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(0)
    torch.distributed.init_process_group(GPU_BACKEND, rank=0, world_size=1)
    yield DistEnv(0, 1, 0, GPU_BACKEND)
    torch.distributed.destroy_process_group()


def test_bf16_autocast_logits_follow_fp32_and_the_loss_stays_fp32():
    torch.manual_seed(0)
    model = tiny_llama().cuda().eval()
    ids = torch.randint(0, model.config.vocab_size, (4, 32), device="cuda")
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids)
        with torch.autocast("cuda", torch.bfloat16):
            mixed = model(input_ids=ids, labels=ids)
    assert mixed.logits.dtype == torch.bfloat16
    assert mixed.loss.dtype == torch.float32
    assert torch.allclose(mixed.logits.float(), reference.logits, atol=5e-2, rtol=5e-2)
    assert abs(mixed.loss.item() - reference.loss.item()) < 1e-2


def test_all_reduce_moves_cpu_tensors_for_an_nccl_only_group(process_group_of_one):
    from slingshot import dist

    nccl_only = torch.distributed.new_group(backend="nccl")
    value = torch.tensor([3.0])
    out = dist.all_reduce(value, "sum", group=nccl_only)
    assert out.device.type == "cpu" and out.item() == 3.0
    assert dist.all_reduce_scalar(2.5, "max") == 2.5


def test_fsdp2_step_on_one_gpu_follows_the_unsharded_bf16_step(process_group_of_one):
    from slingshot.models.sharding import shard_model

    torch.manual_seed(0)
    plain, sharded = tiny_llama().cuda(), tiny_llama().cuda()
    sharded.load_state_dict(plain.state_dict())
    shard_model(sharded, torch.device("cuda"))
    ids = torch.randint(0, plain.config.vocab_size, (4, 32), device="cuda")
    for model, autocast in ((plain, True), (sharded, False)):  # FSDP2's policy casts to bf16 itself
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in sharded.state_dict().items()}
    for name, value in plain.state_dict().items():
        assert full[name].device.type == "cuda"
        assert torch.allclose(full[name].float(), value.float(), atol=2e-2), name


def test_megatron_train_step_moves_cpu_batches_to_the_gpu():
    pytest.importorskip("megatron.core")
    from stages import TINY_GPT

    from slingshot.config import OptimizerConfig
    from slingshot.models.config import GPTModelConfig
    from slingshot.models.megatron_gpt import build_gpt, destroy_model_parallel, init_model_parallel
    from slingshot.models.megatron_train import train_step, wrap_for_training

    init_model_parallel(1, 1)
    try:
        cfg = GPTModelConfig(**TINY_GPT)
        model = build_gpt(cfg, bf16=True)
        optimizer = OptimizerConfig(lr=1e-3)
        ddp, opt = wrap_for_training(model, optimizer, bf16=True)
        data = torch.randint(0, cfg.vocab_size, (4, cfg.seq_length + 1))  # on the CPU, as the loader gives
        batch = {"tokens": data[:, :-1], "labels": data[:, 1:], "loss_mask": torch.ones(4, cfg.seq_length)}
        losses = [train_step(ddp, opt, [batch], optimizer.lr)[0] for _ in range(3)]
        assert next(model.parameters()).device.type == "cuda"
        assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    finally:
        destroy_model_parallel()
