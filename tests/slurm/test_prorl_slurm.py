"""ProRL as a 2-node Slurm job on the dev cluster (n1 + n2, one task each, gloo), through
Snakemake and the launcher: sent USR2 mid-run it checkpoints, requeues the same job, resumes,
and every step's logged metrics equal an uninterrupted one-process run's; with one of its
nodes taken down mid-run it is requeued, waits for the node, and completes from its
checkpoint with the same metrics.

The model is the untrained tiny Llama: it solves nothing, so dynamic sampling keeps no group
and no update runs; what must survive the requeue here is the prompt stream, the sampling
seeds, the reset bookkeeping and the step count over 2 ranks (that 2 ranks train exactly as
1 is tests/unit/stages/test_prorl.py::test_two_ranks_match_one_on_the_same_global_batch)."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline import launch_state, run_snakemake, start_snakemake, wait_for
from real_pipeline import checkpoint_steps, manifest_of
from stages import SMALL_DATA, tiny_model_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
KEY = "main/prorl-len16"
# A step of this untrained model takes ~0.1 s on 2 ranks: 30 steps ended within the ~5 s Slurm
# takes to kill a failed node's job step (srun waits 4 s), so the run finished before the node
# failure landed and nothing was resumed. 240 steps leave ~20 s of work after the first checkpoint.
STEPS = 240
KEYS = ("reward_mean", "pass_rate", "response_length", "tokens", "groups_trained", "gen_batches")


def _config(directory: Path, model: Path, backend: str, nodes: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    launcher: dict[str, Any] = {"backend": backend, "poll_interval_s": 1.0, "max_resubmits": 2}
    if backend == "slurm":
        launcher["site"] = "dev"
    prorl = {
        "init_model": str(model),
        "n_samples": 2,
        "batch_prompts": 2,
        "mini_batch_prompts": 2,
        "max_gen_batches": 1,
        "val_every": 10,
        "val_prompts": 2,
        "val_samples": 1,
        "log_every": 1,
        "phases": [{"name": "len16", "steps": STEPS, "max_response_tokens": 16}],
        "checkpoint": {"interval_steps": 5},
        "resources": {"nodes": nodes, "tasks_per_node": 1, "cpus_per_task": 1, "time_min": 15},
    }
    raw = {
        "pipeline": {"name": f"prorl-{backend}-{uuid.uuid4().hex[:6]}"},
        "launcher": launcher,
        "data": SMALL_DATA,
        # ProRL starts the chain (init_model): the stages before it are off.
        "stages": {"prorl": prorl, **{k: {"enabled": False} for k in ("pretrain", "rlp", "synth", "sft")}},
        "variants": {"main": {}},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _history(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{directory}/results/mlflow.db")
    run = manifest_of(directory, KEY)["mlflow_run_id"]
    return {k: sorted((h.step, h.value) for h in client.get_metric_history(run, k)) for k in KEYS}


@pytest.fixture(scope="module")
def baseline(small_data, tmp_path_factory) -> tuple[Path, dict[str, list[tuple[int, float]]]]:
    """The tiny model and the metrics of its uninterrupted one-process (local) run."""
    root = tmp_path_factory.mktemp("prorl-baseline")
    model = tiny_model_dir(root / "model", Path(small_data["outputs"]["tokenizer_dir"]))
    out = run_snakemake(root / "one", _config(root / "one", model, "local", 1), "--until", "prorl")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return model, _history(root / "one")


def _assert_same_metrics(resumed: dict, baseline: dict) -> None:
    """Every step logged, each value (a re-run step's repeat included) the uninterrupted run's."""
    for key in KEYS:
        expected = dict(baseline[key])
        assert sorted({s for s, _ in resumed[key]}) == list(range(1, STEPS + 1)), key
        for step, value in resumed[key]:
            assert value == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (key, step)


def test_two_node_prorl_requeued_by_usr2_logs_the_uninterrupted_metrics(baseline, tmp_path):
    model, expected = baseline
    run_dir = tmp_path / "two"
    proc = start_snakemake(run_dir, _config(run_dir, model, "slurm", 2), "--until", "prorl")
    wait_for(lambda: checkpoint_steps(run_dir / "work", KEY), 400, "the first ProRL checkpoint")
    job_id = launch_state(run_dir, KEY)["submissions"][0]["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    assert proc.wait(timeout=600) == 0, (run_dir / "snakemake.out").read_text()[-3000:]

    nodes = subprocess.run(
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "NNodes"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert nodes and nodes[-1] == "2"
    m = manifest_of(run_dir, KEY)
    assert m["slurm"]["requeues"] == 1 and len(launch_state(run_dir, KEY)["submissions"]) == 1
    resumed = _history(run_dir)
    for key in KEYS:  # the USR2 checkpoint is at a step boundary: each step logged once
        assert [s for s, _ in resumed[key]] == list(range(1, STEPS + 1)), key
    _assert_same_metrics(resumed, expected)


def _job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-j", job_id, "-h", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def test_two_node_prorl_with_a_node_taken_down_completes_from_its_checkpoint(baseline, tmp_path):
    model, expected = baseline
    run_dir = tmp_path / "two"
    proc = start_snakemake(run_dir, _config(run_dir, model, "slurm", 2), "--until", "prorl")
    wait_for(lambda: checkpoint_steps(run_dir / "work", KEY), 400, "the first ProRL checkpoint")
    job_id = launch_state(run_dir, KEY)["submissions"][0]["job_id"]
    node_sh = REPO / "cluster" / "dev" / "node.sh"
    subprocess.run(["bash", str(node_sh), "down", "n2", "test: node failure"], check=True, timeout=120)
    try:
        # Killed and requeued: it cannot run again until both nodes are back.
        wait_for(lambda: _job_state(job_id) != "RUNNING", 120, "the job to leave RUNNING")
    finally:
        subprocess.run(["bash", str(node_sh), "up", "n2"], check=True, timeout=120)
    assert proc.wait(timeout=600) == 0, (run_dir / "snakemake.out").read_text()[-3000:]

    log = (run_dir / "results" / "logs" / "main.prorl-len16.log").read_text()
    resumed_from = [int(s) for s in re.findall(r"prorl-len16: resumed from \S*/step-(\d{8})", log)]
    assert resumed_from, "the job was not resumed: it finished before the node failure killed it"
    assert len(resumed_from) == 1 and resumed_from[0] > 0  # from its checkpoint, not from scratch
    assert manifest_of(run_dir, KEY)["slurm"]["restarts"] >= 1
    _assert_same_metrics(_history(run_dir), expected)
