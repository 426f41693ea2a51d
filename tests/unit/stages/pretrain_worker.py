"""Spawned worker for the pretrain stage tests: runs phases of the real stage in a fresh
process (so torch.distributed, Megatron's parallel state and the CPU shim never leak into
pytest), records every step's metrics, and stops on request after a given step."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from slingshot.checkpoint import StageInterrupted
from slingshot.tracking import Tracker


class RecordingTracker(Tracker):
    """A disabled tracker that keeps what the stage logs (metrics by step, inputs, models)."""

    def __init__(self) -> None:
        super().__init__(None, None)
        self.metrics: dict[int, dict[str, float]] = {}
        self.inputs: list[str] = []
        self.models: list[str] = []

    def log_metrics(self, metrics: Any, step: int) -> None:
        self.metrics.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})

    def log_input(self, name: str, source: Any, digest: str, context: str = "training") -> None:
        self.inputs.append(name)

    def log_model_dir(self, name: str, model_dir: Any, params: Any = None) -> str | None:
        self.models.append(str(model_dir))
        return None


def run_jobs(
    index: int,
    root: str,
    overrides: dict[str, Any],
    data: dict[str, Any],
    jobs: list[dict],
    world_size: int = 1,
    port: int = 0,
) -> None:
    """Run ``jobs`` in order in this process (rank ``index`` of ``world_size``, gloo, as the
    job wrapper would set up); rank 0 writes ``<root>/<name>.json`` for each."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from stages import StopAfter, as_manifest, make_ctx, pipeline_config

    from slingshot.dist import DistEnv
    from slingshot.stages import pretrain

    env = DistEnv()
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=index, world_size=world_size)
        env = DistEnv(index, world_size, index, "gloo")
    cfg = pipeline_config(Path(root), overrides)
    for job in jobs:
        tmp = Path(root) / job["dir"]
        upstream = {
            "data": data,
            **{k: json.loads(Path(v).read_text())["manifest"] for k, v in job.get("upstream", {}).items()},
        }
        tracker = RecordingTracker()
        ctx = make_ctx(
            tmp,
            "pretrain",
            cfg,
            upstream,
            stage=f"pretrain-{job['phase']}",
            phase=job["phase"],
            model_from=job.get("model_from"),
            init_model=job.get("init_model"),
            tracker=tracker,
            dist=env,
        )
        ctx.triggers = StopAfter(ctx.config.checkpoint.interval_steps, job.get("stop_after"))
        record: dict[str, Any] = {"pid": os.getpid()}
        try:
            result = pretrain.run(ctx)
            record["manifest"] = as_manifest("pretrain", result, f"main/pretrain-{job['phase']}")
            record["tokens"] = result.tokens
        except StageInterrupted as stop:
            record["interrupted_at"] = stop.step
        record["metrics"] = {str(k): v for k, v in sorted(tracker.metrics.items())}
        record["inputs"] = tracker.inputs
        record["models"] = tracker.models
        record["checkpoints"] = [c.step for c in ctx.checkpoints.complete()]
        if job.get("probe") and "manifest" in record:
            record["probe"] = megatron_probe(
                cfg, record["manifest"], data, Path(root) / f"{job['name']}.probe.pt"
            )
        if env.is_main:
            Path(root, f"{job['name']}.json").write_text(json.dumps(record))
    if world_size > 1:
        torch.distributed.destroy_process_group()


def megatron_probe(cfg: Any, manifest: dict[str, Any], data: dict[str, Any], out: Path) -> float:
    """Load the phase's final Megatron checkpoint into a fresh model and compute its loss on a
    batch of the general corpus; save the batch for the HF side of the comparison."""
    from megatron.core import parallel_state

    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.megatron_checkpoint import load_sharded
    from slingshot.models.megatron_data import build_phase_data
    from slingshot.models.megatron_gpt import build_gpt, destroy_model_parallel, init_model_parallel

    section = cfg.variant_stages("main").pretrain
    tokenizer = load_tokenizer(data["outputs"]["tokenizer_dir"])
    model_cfg = section.model.model_copy(update={"vocab_size": len(tokenizer)})
    init_model_parallel(1, 1)
    try:
        model = build_gpt(model_cfg)
        load_sharded(Path(manifest["outputs"]["mcore_checkpoint"]) / "mcore", model)
        batch = build_phase_data(
            tokenizer,
            {"general": data["outputs"]["indexed_general"]},
            {"general": 1.0},
            sequence_length=model_cfg.seq_length,
            num_samples=4,
            global_batch_size=4,
            seed=99,
            budgets={"general": 8},
        ).micro_batches(0, 0, 1, 4, start={"general": 0})[0]
        model.eval()
        with torch.no_grad():
            loss = float(model(batch["tokens"], None, None, labels=batch["labels"]).mean())
        torch.save(batch, out)
        assert parallel_state.get_data_parallel_world_size() == 1
        return loss
    finally:
        destroy_model_parallel()
