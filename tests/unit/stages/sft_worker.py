"""Runs the real SFT stage (or another training stage: ``spec["kind"]``, e.g. ``rlp``) for
the tests, in this process or as one rank of a multi-process job (spawned locally with
``python sft_worker.py <spec.json> <rank>``, or as a Slurm task through submitit), records
every logged metric by step, and writes ``<out>.json``."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from slingshot.checkpoint import StageInterrupted
from slingshot.tracking import Tracker

# Small enough for 2 shared cores: ~4 optimizer steps of a 2-layer, 64-wide model.
TINY = {
    "epochs": 1,
    "seq_length": 256,
    "micro_batch_size": 2,
    "global_batch_size": 4,  # 2 micro-batches of 2 on one rank, 1 each on two
    "log_every": 1,
    "eval_every": 2,
    "eval_fraction": 0.1,
    "optimizer": {"lr": 0.002, "warmup_steps": 1},
}


def synth_dataset(out: Path, tasks_path: str, n: int) -> Path:
    """A synthesis-stage dataset (columns and completion format) written by the teacher."""
    from datasets import Dataset

    from slingshot.data.tasks import load_entries
    from slingshot.data.teacher import ProceduralTeacher

    teacher = ProceduralTeacher(seed=0)
    rows = []
    for entry in load_entries(tasks_path)[:n]:
        trace = teacher.solve(entry)
        rows.append(
            {
                "problem": trace.prompt,
                "solution": trace.completion,
                "answer": trace.answer,
                "task": trace.family,
                "round": 0,
                "cluster": 0,
            }
        )
    Dataset.from_list(rows).save_to_disk(str(out))
    return out


class RecordingTracker(Tracker):
    """A disabled tracker that keeps what the stage logs (metrics by step, inputs, models)."""

    def __init__(self) -> None:
        super().__init__(None, None)
        self.metrics: dict[int, dict[str, float]] = {}
        self.inputs: list[tuple[str, str]] = []
        self.models: list[str] = []

    def log_metrics(self, metrics: Any, step: int) -> None:
        self.metrics.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})

    def log_input(self, name: str, source: Any, digest: str, context: str = "training") -> None:
        self.inputs.append((name, digest))

    def log_model_dir(self, name: str, model_dir: Any, params: Any = None) -> str | None:
        self.models.append(str(model_dir))
        return None


def run_stage(spec: dict[str, Any], dist: Any = None) -> dict[str, Any]:
    """One run from ``spec`` (kind, root, overrides, upstream, init_model, stop_after, interval, out)."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import importlib

    from stages import StopAfter, make_ctx, pipeline_config

    kind = spec.get("kind", "sft")
    stage = importlib.import_module(f"slingshot.stages.{kind}")
    root = Path(spec["root"])
    cfg = pipeline_config(root, {"stages": {kind: spec["overrides"]}})
    tracker = RecordingTracker()
    ctx = make_ctx(
        root, kind, cfg, spec["upstream"], init_model=spec["init_model"], tracker=tracker, dist=dist
    )
    ctx.triggers = StopAfter(spec.get("interval", 1000), spec.get("stop_after"))
    record: dict[str, Any] = {"interrupted_at": None}
    try:
        result = stage.run(ctx)
        record.update(
            outputs=result.outputs, metrics=result.metrics, tokens=result.tokens, extra=result.extra
        )
    except StageInterrupted as stop:
        record["interrupted_at"] = stop.step
    record["steps"] = {str(k): v for k, v in sorted(tracker.metrics.items())}
    record["inputs"] = tracker.inputs
    record["models"] = tracker.models
    record["world_size"] = ctx.dist.world_size
    record["node"] = os.environ.get("SLURMD_NODENAME")
    if ctx.dist.is_main and spec.get("out"):
        Path(spec["out"]).write_text(json.dumps(record))
    return record


def start_ranks(spec: dict[str, Any], spec_path: Path, env_vars: dict[str, str] | None = None) -> list[Any]:
    """Spawn ``spec["world_size"]`` local gloo ranks of this worker (``spec["port"]`` free)."""
    import subprocess

    spec_path.write_text(json.dumps(spec))
    here = Path(__file__).resolve().parent
    pythonpath = os.pathsep.join(
        [str(here), str(here.parents[1] / "support"), os.environ.get("PYTHONPATH", "")]
    )
    run_env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", **(env_vars or {})}
    return [
        subprocess.Popen(
            [sys.executable, str(here / "sft_worker.py"), str(spec_path), str(rank)],
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(spec["world_size"])
    ]


def finish_ranks(procs: list[Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Wait for the ranks; rank 0's record (``spec["out"]``), or the ranks' output on a failure."""
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(out[-3000:] for out in outs)
    return json.loads(Path(spec["out"]).read_text())


def run_distributed(spec: dict[str, Any]) -> dict[str, Any]:
    """A rank of a multi-process run: env from Slurm/submitit or from RANK/WORLD_SIZE."""
    from slingshot.dist import init_distributed, shutdown_distributed

    dist = init_distributed(timeout_s=300)
    try:
        return run_stage(spec, dist)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    spec_path, rank = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    os.environ.update(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=str(spec["world_size"]))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(spec["port"]))
    run_distributed(spec)
