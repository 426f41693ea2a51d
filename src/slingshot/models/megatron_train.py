"""Megatron training: DDP + optimizer wrapping, THE training step, and the data-parallel mean.

The pretrain stage, the tests and the benchmark all use these, so what is tested and
measured is what trains: Megatron's Adam with decoupled weight decay (= AdamW), grad
clipping by global norm, optional distributed optimizer, fp32 grads/master weights, and
one optimizer step over a rank's micro-batches (no pipeline schedule: PP=1).
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models.gpt import GPTModel
from megatron.core.optimizer import MegatronOptimizer, get_megatron_optimizer
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig

from slingshot import dist
from slingshot.config import OptimizerConfig
from slingshot.models import cpu_shim
from slingshot.models.config import ParallelConfig

ADAM_EPS = 1e-8


def wrap_for_training(
    model: GPTModel,
    optimizer: OptimizerConfig,
    parallel: ParallelConfig | None = None,
    *,
    bf16: bool = False,
) -> tuple[DistributedDataParallel, MegatronOptimizer]:
    """Wrap ``model`` in Megatron's DDP (contiguous fp32 grad buffer) and build its AdamW.

    ``optimizer`` gives the peak lr, betas, weight decay and clip norm (the schedule is the
    caller's: :func:`train_step` takes each step's lr); ``parallel`` whether the optimizer
    state is distributed over data-parallel ranks.
    """
    cpu_shim.apply()
    distributed_optimizer = (parallel or ParallelConfig()).use_distributed_optimizer
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=distributed_optimizer,
        ),
        model,
    )
    megatron_optimizer = get_megatron_optimizer(
        MegatronOptimizerConfig(
            optimizer="adam",
            lr=optimizer.lr,
            weight_decay=optimizer.weight_decay,
            adam_beta1=optimizer.betas[0],
            adam_beta2=optimizer.betas[1],
            adam_eps=ADAM_EPS,
            decoupled_weight_decay=True,
            clip_grad=optimizer.grad_clip,
            bf16=bf16,
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_distributed_optimizer=distributed_optimizer,
        ),
        [ddp],
    )
    return ddp, megatron_optimizer


def train_step(
    ddp: DistributedDataParallel,
    optimizer: MegatronOptimizer,
    micro_batches: list[dict[str, torch.Tensor]],
    lr: float,
) -> tuple[float, float]:
    """One optimizer step at ``lr`` over this rank's micro-batches (gradient accumulation).

    A micro-batch is ``{"tokens", "labels", "loss_mask"}`` ([batch, seq] each, on any device:
    they move to the model's). Each micro-batch's masked token-mean loss is scaled by
    1/n_micro and Megatron's DDP averages over data-parallel ranks, so the update equals one
    step on the global batch whatever the DP size. Returns (this rank's mean loss, global
    grad norm before clipping).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    total = torch.zeros(())
    for batch in micro_batches:
        tokens, labels, loss_mask = (batch[k].to(device) for k in ("tokens", "labels", "loss_mask"))
        per_token = ddp(tokens, None, None, labels=labels)  # [b, s] fp32 CE
        mask = loss_mask.to(per_token.dtype)
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
        (loss / len(micro_batches)).backward()
        total += loss.detach().float().cpu()
    ddp.finish_grad_sync()
    _ok, grad_norm, _zeros = optimizer.step()
    return float(total) / len(micro_batches), float(grad_norm or 0.0)


def data_parallel_mean(value: float) -> float:
    """The mean of ``value`` over Megatron's data-parallel group (e.g. each rank's loss)."""
    from megatron.core import parallel_state

    dp_size = parallel_state.get_data_parallel_world_size() if dist.is_initialized() else 1
    if dp_size == 1:
        return value
    box = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(box, "sum", group=parallel_state.get_data_parallel_group())
    return float(box.item()) / dp_size
