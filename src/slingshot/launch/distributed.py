"""The distributed environment of a stage job: one task per GPU (or per CPU process).

submitit's TorchDistributedEnvironment exports RANK/WORLD_SIZE/MASTER_ADDR/... from
the Slurm (or local) job; then init_process_group — NCCL on GPU, gloo on CPU. No
torchrun: it swallows the signals the checkpoint protocol relies on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (a single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def _in_submitit_job() -> bool:
    return "SUBMITIT_FOLDER" in os.environ or "SUBMITIT_EXECUTOR" in os.environ


def init_distributed(timeout_s: float = 600.0) -> DistEnv:
    """Initialise torch.distributed for a multi-task job; a single task gets no process group."""
    import datetime

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistEnv(
            torch.distributed.get_rank(),
            torch.distributed.get_world_size(),
            int(os.environ.get("LOCAL_RANK", 0)),
            torch.distributed.get_backend(),
        )
    if _in_submitit_job():
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks <= 1:
            return DistEnv()
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    elif int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistEnv()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, backend)


def shutdown_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
