"""`slingshot status` on a toy pipeline with a finished, a running and a failed stage."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from pipeline import (
    BIN,
    events,
    kill_session,
    launch_state,
    pipeline_env,
    start_snakemake,
    wait_for,
    write_config,
)

from slingshot.status import collect_status, format_elapsed, pick_metric, print_status
from slingshot.validate import load_pipeline_config


def _status(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "slingshot"), "status", *args],
        cwd=directory,
        env=pipeline_env(COLUMNS="220"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_nothing_run_yet_and_bad_config(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, {"pipeline": {"name": "fresh"}})
    monkeypatch.chdir(tmp_path)
    rows = collect_status(load_pipeline_config(config))
    assert [r.stage for r in rows] == ["data", "pretrain-p1", "rlp", "evaluate-rlp", "report"]
    assert {r.state for r in rows} == {"not started"}
    assert not (tmp_path / "results" / "mlflow.db").exists()  # status never creates a store
    assert print_status(str(tmp_path / "missing.yaml")) == 2
    assert print_status(str(config)) == 0
    assert "not started" in capsys.readouterr().out


def test_key_metric_choice_and_elapsed_format():
    assert pick_metric("prorl", ["entropy", "reward_mean", "kl"]) == "reward_mean"
    assert pick_metric("rlp", ["loss", "x"]) == "loss"
    assert pick_metric("sft", ["b", "a"]) == "a"
    assert pick_metric("sft", []) is None
    assert format_elapsed(3725) == "1:02:05"
    assert format_elapsed(65.4) == "1:05"
    assert format_elapsed(None) == ""


@pytest.mark.slow
def test_finished_running_and_failed_stages(tmp_path, monkeypatch):
    # Resources (and so the setup lines) are not part of a node's identity: the group size
    # keeps the two variants' rlp nodes apart, the setup lines make one fail, one slow.
    config = write_config(
        tmp_path,
        {"pipeline": {"name": "status"}},
        variants={
            "bad": {"stages": {"rlp": {"resources": {"setup": ["export TOY_FAIL_AT=2"]}}}},
            "slow": {
                "stages": {"rlp": {"group_size": 8, "resources": {"setup": ["export TOY_STEP_SECONDS=30"]}}}
            },
        },
    )
    proc = start_snakemake(tmp_path, config, "--keep-going")
    try:
        wait_for(lambda: len(events(tmp_path, "slow/rlp")) >= 1, 240, "the slow rlp stage to run")
        wait_for(lambda: proc_failed(tmp_path), 120, "the bad rlp stage to fail")
        out = _status(tmp_path)  # the default config: work/pipeline-config.yaml of the DAG build
        assert out.returncode == 0, out.stderr
        text = out.stdout
        for expected in ("done", "running", "failed", "not started", "toy stage failing on purpose"):
            assert expected in text, text
        assert "(config: work/pipeline-config.yaml)" in text

        monkeypatch.chdir(tmp_path)
        cfg = load_pipeline_config(tmp_path / "work" / "pipeline-config.yaml")
        rows = {(r.variant, r.stage): r for r in collect_status(cfg)}
        pre = rows[("bad", "pretrain-p1")]
        assert pre.state == "done" and rows[("slow", "pretrain-p1")].shared_from == "bad"
        assert pre.metric == "loss" and pre.step == 6 and pre.run_id and pre.elapsed_s > 0
        assert rows[("bad", "data")].state == "done"
        bad = rows[("bad", "rlp")]
        assert bad.state == "failed" and "failing on purpose" in bad.detail
        assert bad.metric == "loss" and bad.step == 2  # logged before it raised
        slow = rows[("slow", "rlp")]
        assert slow.state == "running" and slow.backend == "local" and slow.restarts == 0
        assert slow.job_id == launch_state(tmp_path, "slow/rlp")["submissions"][0]["job_id"]
        assert slow.metric == "loss" and slow.step >= 1 and slow.run_id in text
        # Its progress, from the training loop's progress.json: step i of the toy's 6.
        assert slow.progress is not None and slow.progress["total"] == 6
        assert f"{slow.progress['step']}/6 (" in text
        assert rows[("slow", "evaluate-rlp")].state == "not started"
        assert rows[("bad", "report")].state == "not started"

        # The running job dies without a result (killed): it shows as lost. Snakemake goes
        # first, or its launcher would resubmit the job.
        kill_session(proc)
        os.kill(int(slow.job_id), signal.SIGKILL)
        wait_for(lambda: _job_gone(int(slow.job_id)), 30, "the killed job to go")
        lost = {(r.variant, r.stage): r for r in collect_status(cfg)}[("slow", "rlp")]
        assert lost.state == "lost", lost
    finally:
        if proc.poll() is None:
            kill_session(proc)
        for key in ("slow/rlp", "bad/rlp"):
            for sub in launch_state(tmp_path, key)["submissions"]:
                if _job_gone(int(sub["job_id"])) is False:
                    os.kill(int(sub["job_id"]), signal.SIGKILL)


def proc_failed(directory: Path) -> bool:
    log = directory / "results" / "logs" / "bad.rlp.log"
    return log.is_file() and "FAILED" in log.read_text()


def _job_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0] == "Z"


def test_a_finished_evaluation_shows_each_benchmarks_pass_at_1(tmp_path, monkeypatch):
    import io
    import json

    from rich.console import Console

    from slingshot.plan import build_plan
    from slingshot.status import render_table

    config = write_config(tmp_path, {"pipeline": {"name": "bench"}})
    monkeypatch.chdir(tmp_path)
    cfg = load_pipeline_config(config)
    manifest = build_plan(cfg).node(next(iter(cfg.variants)), "evaluate-rlp").manifest_path(cfg)
    manifest.parent.mkdir(parents=True)
    metrics = {
        "pass_at_1": 0.5,
        "bench/gsm8k/pass_at_1": 0.25,
        "bench/gsm8k/pass_at_4": 0.5,
        "bench/aime/pass_at_1": 0,
    }
    manifest.write_text(json.dumps({"metrics": metrics, "wall_time_s": 3.0}))
    rows = collect_status(cfg, with_metrics=False)
    evaluation = next(r for r in rows if r.stage == "evaluate-rlp")
    assert evaluation.state == "done" and evaluation.benchmarks == {"gsm8k": 0.25, "aime": 0}
    assert all(not r.benchmarks for r in rows if r is not evaluation)
    out = io.StringIO()
    Console(file=out, width=200).print(render_table(cfg, rows))
    assert "gsm8k pass@1=0.25" in out.getvalue() and "aime pass@1=0" in out.getvalue()
