"""Job arrays for work a stage fans out (e.g. synthesis feature shards).

``run_array(fn, n, ...)`` calls ``fn(i)`` for i in 0..n-1 and returns the results in
order: on Slurm as ONE submitit job array (``executor.map_array``, ``--array=0-(n-1)``)
with the given resources (a stage's share for one task: :func:`array_task_resources`); on the local backends sequentially in this process (a local
machine has no spare cores to fan out to, and tests stay debuggable). Stages call this
instead of importing submitit, so stages still know nothing of Slurm.

The array's folder lives under the caller's work dir; ``fn`` must be picklable and
should make each task idempotent (write its result atomically, reuse it when present),
so that a resubmitted array or a requeued caller redoes only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from slingshot.config import ArrayTaskConfig, PipelineConfig, Resources
from slingshot.launch.site import load_site, slurm_parameters

T = TypeVar("T")


class ArrayTaskError(RuntimeError):
    pass


def _slurm_executor(cfg: PipelineConfig, res: Resources, folder: Path, name: str) -> Any:
    import submitit

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    site = load_site(cfg.launcher.site)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=site.job_python())
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": res.time_min,
        # One process per array task: a shard is independent work, not a distributed group.
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": res.gpus_per_node,
        "cpus_per_task": res.cpus_per_task,
        **slurm_parameters(site, res),
    }
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    executor.update_parameters(**params)
    return executor


def array_task_resources(stage: Resources, task: ArrayTaskConfig) -> Resources:
    """What one array task requests: ``task``'s share of the stage's node.

    A task with g of the node's G GPUs gets g/G of the node's CPUs (cpus_per_task x tasks per
    node) and memory unless ``task`` sets them; without GPUs, one stage task's CPUs and
    1/tasks_per_node of the memory. Partition, account, QoS, constraint and setup are the
    stage's. The parent job's own request is ``stage``, unchanged.
    """
    tasks = stage.effective_tasks_per_node
    gpus = task.gpus if task.gpus is not None else min(1, stage.gpus_per_node)
    if gpus > stage.gpus_per_node:
        raise ValueError(
            f"array_task.gpus: {gpus} GPUs per array task, but the stage's nodes have "
            f"{stage.gpus_per_node} (resources.gpus_per_node)"
        )
    share = gpus / stage.gpus_per_node if stage.gpus_per_node and gpus else 1 / tasks
    cpus = task.cpus_per_task or max(1, int(stage.cpus_per_task * tasks * share))
    mem = task.mem_gb or (round(stage.mem_gb * share, 3) if stage.mem_gb else None)
    return stage.model_copy(
        update={
            "nodes": 1,
            "gpus_per_node": gpus,
            "tasks_per_node": 1,
            "cpus_per_task": cpus,
            "mem_gb": mem,
            "time_min": task.time_min or stage.time_min,
        }
    )


def array_resources(stage: Resources, section: object) -> Resources:
    """One array task's request for a stage whose section says its share (``array_task``);
    the stage's own resources for any other."""
    task = getattr(section, "array_task", None)
    return array_task_resources(stage, task) if isinstance(task, ArrayTaskConfig) else stage


def uses_slurm(cfg: PipelineConfig) -> bool:
    return cfg.launcher.backend == "slurm"


def run_array(
    fn: Callable[[int], T],
    indices: Sequence[int],
    *,
    cfg: PipelineConfig,
    resources: Resources,
    folder: Path,
    name: str,
    poll_s: float | None = None,
    on_submit: Callable[[list[str]], None] | None = None,
) -> list[T]:
    """``[fn(i) for i in indices]``: one Slurm job array when the launcher backend is slurm,
    else sequentially in this process. Raises ArrayTaskError naming the failed tasks."""
    if not indices:
        return []
    if not uses_slurm(cfg):
        return [fn(i) for i in indices]
    executor = _slurm_executor(cfg, resources, folder, name)
    jobs = executor.map_array(fn, list(indices))
    ids = [str(job.job_id) for job in jobs]
    if on_submit is not None:
        on_submit(ids)
    print(f"[slingshot] {name}: submitted array {ids[0].split('_')[0]} ({len(ids)} tasks)", flush=True)
    poll = poll_s if poll_s is not None else cfg.launcher.poll_interval_s
    while not all(job.done() for job in jobs):
        time.sleep(poll)
    results: list[T] = []
    failed: list[str] = []
    for i, job in zip(indices, jobs, strict=True):
        try:
            results.append(job.result())
        except Exception as error:  # noqa: BLE001 - collect every task's failure, then raise once
            failed.append(f"task {i} (job {job.job_id}): {error}")
    if failed:
        raise ArrayTaskError(
            f"{name}: {len(failed)} of {len(jobs)} array tasks failed; logs in {folder}\n" + "\n".join(failed)
        )
    return results
