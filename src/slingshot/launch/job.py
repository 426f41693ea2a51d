"""The callable submitit runs for a stage: builds the StageContext, runs the stage,
writes the manifest, and turns a stop request into a requeue.

Checkpoint protocol: USR2 (sent by Slurm before the time limit, by a preemption, or by
hand) only sets a flag; the stage loop saves at its next step boundary and raises
StageInterrupted; here rank 0 requeues the job (``scontrol requeue``: same job id,
SLURM_RESTART_COUNT + 1) on Slurm, or asks the launcher to resubmit elsewhere.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slingshot.config import CheckpointConfig, PipelineConfig
from slingshot.io import private_dir, sha256_json
from slingshot.launch.state import LaunchState, record_start
from slingshot.manifest import git_commit, write_manifest
from slingshot.plan import Node, Plan, build_plan, stage_config
from slingshot.tracking import Tracker, journal_file, open_parent_run
from slingshot.validate import load_pipeline_config

if TYPE_CHECKING:
    from slingshot.checkpoint import StageInterrupted
    from slingshot.dist import DistEnv

# The launcher imports this module to build the job it submits, on a login node and once
# per stage: what only the job needs (torch, the stage context, checkpointing, process
# groups) is imported inside the job, which saves every launcher a few seconds of torch import.

REQUEUE = "requeue"
DONE = "done"


def resolve_entrypoint(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise RuntimeError(
            f"stage entrypoint '{spec}': cannot import module '{module_name}' ({error})"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RuntimeError(f"stage entrypoint '{spec}': module '{module_name}' has no '{attr}'") from None


def default_entrypoint(kind: str) -> str:
    return f"slingshot.stages.{kind}:run"


def slurm_restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def open_stage_tracker(cfg: PipelineConfig, plan: Plan, node: Node, dist: DistEnv) -> Tracker:
    if not dist.is_main:
        return Tracker.disabled()
    owner = node.owner or next(iter(cfg.variants))
    commit = git_commit()
    parent = open_parent_run(
        cfg.tracking_uri,
        cfg.experiment_name,
        cfg.work_dir / owner,
        owner,
        tags={
            "slingshot.variant": owner,
            "slingshot.pipeline": cfg.pipeline.name,
            "slingshot.git_commit": commit,
        },
    )
    return Tracker.open_run(
        cfg.tracking_uri,
        cfg.experiment_name,
        node.work_dir(cfg) / "mlflow_run_id",
        run_name=node.stage if not node.owner else f"{node.owner}/{node.stage}",
        parent_run_id=parent,
        tags={"slingshot.stage": node.stage, "slingshot.kind": node.kind, "slingshot.variant": owner},
        journal_path=journal_file(node.work_dir(cfg)),
    )


@dataclass
class StageJob:
    """Picklable: submitit stores it and runs it (again, after a requeue) on the compute node."""

    config_path: str
    variant: str
    stage: str
    cwd: str
    max_requeues: int

    def __call__(self) -> dict[str, Any]:
        import torch

        from slingshot.checkpoint import (
            CheckpointManager,
            SaveTriggers,
            StageInterrupted,
            time_budget_seconds,
        )
        from slingshot.context import StageContext, StageResult, read_manifest
        from slingshot.dist import init_distributed, shutdown_distributed
        from slingshot.launch.array import array_resources, run_array

        os.chdir(self.cwd)
        cfg = load_pipeline_config(self.config_path)
        plan = build_plan(cfg)
        node = plan.node(self.variant, self.stage)
        section = stage_config(cfg, node)
        resources = section.resources if section else cfg.launcher.default_resources
        checkpointing = section.checkpoint if section else CheckpointConfig()
        triggers = SaveTriggers(
            interval_steps=checkpointing.interval_steps,
            time_budget_s=time_budget_seconds(resources.time_min, checkpointing.time_budget_min),
        )
        triggers.install_signal_handler()
        # Use exactly the CPUs the job asked for: oversubscribed torch threads are far
        # slower than fewer threads (and the scheduler reserved only these).
        torch.set_num_threads(resources.cpus_per_task)
        dist = init_distributed()
        work_dir, output_dir = node.work_dir(cfg), node.output_dir(cfg)
        private_dir(work_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        upstream_paths = plan.upstream_manifests(node)
        upstream = {key: read_manifest(path) for key, path in upstream_paths.items()}
        if dist.is_main:
            record_start(work_dir)
        tracker = open_stage_tracker(cfg, plan, node, dist)
        state = LaunchState.load(work_dir)
        restarts = slurm_restart_count() + state.restarts
        stage_cfg_json = section.model_dump(mode="json") if section else cfg.data.model_dump(mode="json")
        tracker.log_params(stage_cfg_json)
        tracker.set_tags(
            {
                "slingshot.digest": node.digest,
                "slingshot.config_digest": sha256_json(stage_cfg_json),
                "slingshot.variants": ",".join(node.variants),
                "slingshot.slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slingshot.node_list": os.environ.get("SLURM_JOB_NODELIST"),
                "slingshot.restarts": restarts,
                "slingshot.upstream_run_ids": ",".join(
                    m.get("mlflow_run_id") or "" for m in upstream.values()
                ),
                "slingshot.upstream_model_dirs": ",".join(
                    m["outputs"]["model_dir"]
                    for m in upstream.values()
                    if "model_dir" in m.get("outputs", {})
                ),
                "slingshot.init_model": node.init_model,
                # The interpreter this job runs (the site's `python`), and its torch.
                "slingshot.python": sys.executable,
                "slingshot.torch": torch.__version__,
            }
        )
        ctx = StageContext(
            stage=node.stage,
            kind=node.kind,
            variant=node.owner,
            phase=node.phase,
            config=section,
            pipeline=cfg,
            upstream=upstream,
            model_from=node.model_from,
            init_model=node.init_model,
            work_dir=work_dir,
            output_dir=output_dir,
            tracker=tracker,
            dist=dist,
            checkpoints=CheckpointManager(work_dir / "checkpoints", keep=checkpointing.keep),
            triggers=triggers,
            run_array=partial(run_array, cfg=cfg, resources=array_resources(resources, section)),
        )
        run = resolve_entrypoint(cfg.entrypoints.get(node.kind) or default_entrypoint(node.kind))
        try:
            result: StageResult = run(ctx)
        except StageInterrupted as stop:
            tracker.set_tags({"slingshot.last_stop": f"step {stop.step} ({stop.signal_name})"})
            return self._requeue(stop, dist)
        except BaseException:
            tracker.finish("FAILED")
            raise
        if dist.is_main:
            record = {
                "stage": node.stage,
                "kind": node.kind,
                "key": node.key,
                "variant": node.owner,
                "variants": node.variants,
                "digest": node.digest,
                "config_digest": sha256_json(stage_cfg_json),
                "outputs": result.outputs,
                "metrics": result.metrics,
                "tokens": result.tokens,
                **result.extra,
                "mlflow_run_id": tracker.run_id,
                "slurm": {
                    "job_ids": state.job_ids,
                    "restarts": restarts,
                    "requeues": slurm_restart_count(),
                    "resubmits": state.restarts,
                },
                "wall_time_s": time.time() - (state.first_submitted_at or time.time()),
            }
            manifest_path = node.manifest_path(cfg)
            write_manifest(manifest_path, record, upstream_paths)
            tracker.log_artifact(manifest_path)
            tracker.finish("FINISHED")
        shutdown_distributed()
        return {"status": DONE}

    def _requeue(self, stop: StageInterrupted, dist: DistEnv) -> dict[str, Any]:
        from slingshot.dist import shutdown_distributed

        job_id = os.environ.get("SLURM_JOB_ID")
        if job_id is None:  # local / in-process: the launcher resubmits and the stage resumes
            shutdown_distributed()
            return {"status": REQUEUE, "step": stop.step, "signal": stop.signal_name}
        if slurm_restart_count() >= self.max_requeues:
            raise RuntimeError(
                f"stopped by {stop.signal_name} at step {stop.step} after {slurm_restart_count()} requeues "
                f"(launcher.max_requeues={self.max_requeues}); the checkpoint is kept: rerun to continue"
            )
        if dist.is_main:
            print(f"[slingshot] {stop}; requeueing Slurm job {job_id}", flush=True)
            subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
            # Slurm holds a requeued job for ~2 minutes (BeginTime); the checkpoint is safe, so start asap.
            subprocess.run(
                ["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=False, timeout=60
            )
            sys.exit(-1)  # Slurm restarts the job; exiting without a result keeps submitit waiting
        time.sleep(300)  # other ranks wait to be ended by the requeue rather than fail the step first
        sys.exit(-1)


def job_paths_hint(work_dir: Path) -> str:
    return f"logs and checkpoints are in {work_dir}"
