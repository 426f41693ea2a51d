"""Runs the real synth or evaluate stage for the tests, in this process or as one rank of a
multi-process gloo job (``python rank_worker.py <spec.json> <rank>``, spawned by
:func:`run_ranks`), and writes what rank 0 saw to ``spec["out"]``.

spec: kind, root, overrides (the stage's section), upstream, init_model, stage, model_from,
world_size, port, out.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
SUPPORT = HERE.parents[1] / "support"


def run_stage(spec: dict[str, Any], dist: Any = None) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from stages import make_ctx, pipeline_config

    root = Path(spec["root"])
    cfg = pipeline_config(root, {"stages": {spec["kind"]: spec["overrides"]}})
    ctx = make_ctx(
        root,
        spec["kind"],
        cfg,
        spec["upstream"],
        stage=spec.get("stage"),
        model_from=spec.get("model_from"),
        init_model=spec.get("init_model"),
        dist=dist,
    )
    stage = importlib.import_module(f"slingshot.stages.{spec['kind']}")  # only what this run needs
    result = stage.run(ctx)
    record = {
        "outputs": result.outputs,
        "metrics": result.metrics,
        "tokens": result.tokens,
        "extra": result.extra,
        "world_size": ctx.dist.world_size,
    }
    if ctx.dist.is_main and spec.get("out"):
        Path(spec["out"]).write_text(json.dumps(record))
    return record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(spec: dict[str, Any], world: int = 2) -> dict[str, Any]:
    """``spec`` run as ``world`` local gloo ranks; rank 0's record."""
    root = Path(spec["root"])
    root.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "world_size": world, "port": free_port(), "out": str(root / "rank0.json")}
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    pythonpath = os.pathsep.join([str(HERE), str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "rank_worker.py"), str(spec_path), str(rank)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(out[-3000:] for out in outs)
    return json.loads(Path(spec["out"]).read_text())


if __name__ == "__main__":
    spec_path, rank = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    os.environ.update(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=str(spec["world_size"]))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]))
    from slingshot.dist import init_distributed, shutdown_distributed

    env = init_distributed(timeout_s=300)
    try:
        run_stage(spec, env)
    finally:
        shutdown_distributed()
