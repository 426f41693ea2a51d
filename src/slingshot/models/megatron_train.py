"""Megatron DDP + optimizer wrapping and one plain (PP=1) training step.

Kept beside the builder so the pretrain stage, the tests and the benchmark share the
same optimizer setup: Megatron's Adam with decoupled weight decay (= AdamW), grad
clipping by global norm, optional distributed optimizer, fp32 grads/master weights.
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer

from slingshot.models import cpu_shim


def wrap_for_training(
    model: GPTModel,
    *,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    clip_grad: float = 1.0,
    use_distributed_optimizer: bool = False,
    bf16: bool = False,
) -> tuple[DistributedDataParallel, MegatronOptimizer]:
    """Wrap `model` in Megatron's DDP (contiguous fp32 grad buffer) and build its AdamW."""
    cpu_shim.apply()
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=use_distributed_optimizer,
        ),
        model,
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=lr,
            weight_decay=weight_decay,
            adam_beta1=betas[0],
            adam_beta2=betas[1],
            adam_eps=eps,
            decoupled_weight_decay=True,
            clip_grad=clip_grad,
            bf16=bf16,
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_distributed_optimizer=use_distributed_optimizer,
        ),
        [ddp],
    )
    return ddp, optimizer


def train_step(
    ddp: DistributedDataParallel,
    optimizer: MegatronOptimizer,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One forward/backward/step on a [batch, seq] micro-batch without pipeline parallelism.

    Returns (loss, grad_norm). The loss is the mean over unmasked tokens of this rank's
    batch; data-parallel averaging of grads happens inside Megatron's DDP.
    """
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    per_token = ddp(tokens, None, None, labels=labels)  # [b, s] fp32 cross entropy
    if loss_mask is None:
        loss = per_token.mean()
    else:
        mask = loss_mask.to(per_token.dtype)
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    loss.backward()
    ddp.finish_grad_sync()
    _ok, grad_norm, _zeros = optimizer.step()
    return float(loss.detach()), float(grad_norm or 0.0)
