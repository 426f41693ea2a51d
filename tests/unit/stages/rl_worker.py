"""Runs the real ProRL or RLP stage for the tests, in this process or as one rank of a
multi-process job (spawned locally with ``python rl_worker.py <spec.json> <rank>``, or as a
Slurm task through submitit), records every logged metric by step, and writes ``<out>.json``
(rank 0) with the final weights' path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from slingshot.checkpoint import StageInterrupted

HERE = Path(__file__).resolve().parent
SUPPORT = HERE.parents[1] / "support"


def run_stage(spec: dict[str, Any], dist: Any = None) -> dict[str, Any]:
    """One run from ``spec``: kind (prorl/rlp), root, overrides, upstream, init_model, stage,
    phase, interval, stop_after, out."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from sft_worker import RecordingTracker
    from stages import StopAfter, make_ctx, pipeline_config

    from slingshot.stages import prorl, rlp

    kind = spec["kind"]
    if kind == "prorl":  # the test's task family must be known to score its prompts
        from test_prorl import FAMILY

        from slingshot.data.tasks import register_family

        register_family(FAMILY)
    root = Path(spec["root"])
    cfg = pipeline_config(root, {"stages": {kind: spec["overrides"]}})
    tracker = RecordingTracker()
    ctx = make_ctx(
        root,
        kind,
        cfg,
        spec["upstream"],
        stage=spec.get("stage"),
        phase=spec.get("phase"),
        init_model=spec["init_model"],
        tracker=tracker,
        dist=dist,
    )
    ctx.triggers = StopAfter(spec.get("interval", 1000), spec.get("stop_after"))
    record: dict[str, Any] = {"interrupted_at": None}
    try:
        result = (prorl if kind == "prorl" else rlp).run(ctx)
        record.update(outputs=result.outputs, metrics=result.metrics, tokens=result.tokens)
    except StageInterrupted as stop:
        record["interrupted_at"] = stop.step
    record["steps"] = {str(k): v for k, v in sorted(tracker.metrics.items())}
    record["world_size"] = ctx.dist.world_size
    record["node"] = os.environ.get("SLURMD_NODENAME")
    if ctx.dist.is_main and spec.get("out"):
        Path(spec["out"]).write_text(json.dumps(record))
    return record


def run_distributed(spec: dict[str, Any]) -> dict[str, Any]:
    """A rank of a multi-process run: env from Slurm/submitit or from RANK/WORLD_SIZE."""
    from slingshot.dist import init_distributed, shutdown_distributed

    dist = init_distributed(timeout_s=300)
    try:
        return run_stage(spec, dist)
    finally:
        shutdown_distributed()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(spec: dict[str, Any], work: Path, world_size: int) -> dict[str, Any]:
    """``spec`` run as ``world_size`` local processes (1: a plain process, no process group);
    rank 0's record. Every run, the reference included, is a fresh one-thread process, so
    runs differ by their world size only."""
    work.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "world_size": world_size, "port": free_port(), "out": str(work / "record.json")}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    pythonpath = os.pathsep.join([str(HERE), str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    run_env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "rl_worker.py"), str(spec_path), str(rank)],
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world_size)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(out[-3000:] for out in outs)
    return json.loads((work / "record.json").read_text())


if __name__ == "__main__":
    spec_path, rank = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    if spec["world_size"] == 1:
        run_stage(spec)
    else:
        os.environ.update(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=str(spec["world_size"]))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(spec["port"]))
        run_distributed(spec)
