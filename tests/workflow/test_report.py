"""The report node on a finished toy pipeline: table, plots, MLflow artifacts on every
variant's parent run, and `snakemake --report`.

The toy pipeline trains its toy stages; its evaluations are ``fake_evaluate`` below (the
evaluation stage's own aggregation over scripted verdicts, so the table has known values),
and the report is the real one.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pipeline import REPO, pipeline_env, run_snakemake, write_config

from slingshot.context import StageContext, StageResult
from slingshot.evaluation import SampleResult, flat_metrics, summarize, table_csv
from slingshot.io import atomic_write_text

N, PROMPTS = 4, 7  # 7 prompts: each level's shift gives a different multiset of c
LEVEL = {("a", "evaluate-pretrain"): 0, ("a", "evaluate-rlp"): 2, ("b", "evaluate-rlp"): 3}


def verdicts(variant: str, stage: str) -> list[int]:
    """Correct samples per prompt: more for later stages, and for variant b."""
    level = LEVEL[(variant, stage)]
    return [(j + level) % (N + 1) for j in range(PROMPTS)]


def fake_evaluate(ctx: StageContext) -> StageResult:
    results = [
        SampleResult(f"p{j}", "toyfam", i, "", 10 + level, True, i <= c, i < c)
        for j, (c, level) in enumerate(
            (c, LEVEL[(ctx.variant, ctx.stage)]) for c in verdicts(ctx.variant, ctx.stage)
        )
        for i in range(N)
    ]
    rows = summarize(results, ctx.config.k)
    atomic_write_text(ctx.output_dir / "eval_table.csv", table_csv(rows))
    metrics = flat_metrics(rows)
    ctx.tracker.log_metrics(metrics, step=0)
    return StageResult(outputs={"table_csv": str(ctx.output_dir / "eval_table.csv")}, metrics=metrics)


def report_pipeline(directory: Path, name: str) -> Path:
    overrides = {
        "pipeline": {"name": name},
        "stages": {"evaluate": {"models": ["pretrain", "rlp"], "n_samples": N, "k": [1, 2, 4]}},
        "entrypoints": {"evaluate": "test_report:fake_evaluate"},
    }
    config = write_config(
        directory, overrides, variants={"a": {}, "b": {"stages": {"rlp": {"group_size": 8}}}}
    )
    # The toy config names a toy report: the real one runs here.
    text = config.read_text().replace("  report: toy_stage:run\n", "")
    assert "toy_stage:run" in text and "report: toy" not in text
    config.write_text(text)
    return config


def env() -> dict[str, str]:
    # The MLflow UI part of the report has its own test (test_mlflow_ui.py).
    # The caller's PYTHONPATH stays behind these (it may put a checkout's src first).
    paths = [
        str(REPO / "tests" / "support"),
        str(REPO / "tests" / "workflow"),
        os.environ.get("PYTHONPATH", ""),
    ]
    return pipeline_env(
        PYTHONPATH=os.pathsep.join(paths).rstrip(os.pathsep),
        SLINGSHOT_REPORT_MLFLOW_UI="0",
    )


def expected_pass(cs: list[int], k: int) -> float:
    return sum(1 - math.comb(N - c, k) / math.comb(N, k) for c in cs) / len(cs)


@pytest.mark.slow
def test_report_table_plots_mlflow_and_snakemake_report(tmp_path):
    config = report_pipeline(tmp_path, "report")
    out = run_snakemake(tmp_path, config, env=env())
    assert out.returncode == 0, (
        out.stderr[-3000:],
        (tmp_path / "results/logs/report.log").read_text()[-3000:],
    )
    report_dir = tmp_path / "results" / "report"

    with open(report_dir / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    # Recipe order within each variant; b shares a's pretraining and so its evaluation.
    assert [(r["variant"], r["stage"]) for r in rows] == [
        ("a", "pretrain"),
        ("a", "rlp"),
        ("b", "pretrain"),
        ("b", "rlp"),
    ]
    by = {(r["variant"], r["stage"]): r for r in rows}
    assert len({by[key]["pass_at_1"] for key in (("a", "pretrain"), ("a", "rlp"), ("b", "rlp"))}) == 3
    for (variant, stage), node in (
        (("a", "pretrain"), "evaluate-pretrain"),
        (("b", "pretrain"), "evaluate-pretrain"),
        (("a", "rlp"), "evaluate-rlp"),
        (("b", "rlp"), "evaluate-rlp"),
    ):
        cs = verdicts("a" if stage == "pretrain" else variant, node)
        for k in (1, 2, 4):
            assert float(by[(variant, stage)][f"pass_at_{k}"]) == pytest.approx(
                expected_pass(cs, k), abs=1e-4
            )
        assert float(by[(variant, stage)]["parse_rate"]) == pytest.approx(
            sum(min(N, c + 1) for c in cs) / (N * PROMPTS), abs=1e-4
        )
    assert by[("a", "pretrain")]["model"] == "a/pretrain-p1"
    md = (report_dir / "table.md").read_text()
    assert md.count("\n") == 2 + len(rows) and "| b | rlp |" in md
    for png in ("pass_at_1.png", "curves.png"):
        data = (report_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    # MLflow: the files on the report run and on both variants' parent runs, curves read
    # from the training runs, eval metrics by recipe position on the parents.
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    manifest = (report_dir / "manifest.json").read_text()
    import json

    m = json.loads(manifest)
    assert sorted(m["report"]["curves"]) == ["pretrain", "rlp"]
    report_run = m["mlflow_run_id"]
    names = {f.path for f in client.list_artifacts(report_run, "report")}
    assert {"report/table.csv", "report/table.md", "report/pass_at_1.png", "report/curves.png"} <= names
    for variant in ("a", "b"):
        parent = (tmp_path / "work" / variant / "mlflow_parent_run_id").read_text().strip()
        assert m["report"]["parent_runs"][variant] == parent
        files = {f.path for f in client.list_artifacts(parent, "report")}
        assert "report/table.csv" in files and "report/curves.png" in files
        history = client.get_metric_history(parent, "eval.pass_at_1")
        assert [h.step for h in sorted(history, key=lambda h: h.step)] == [0, 1]  # pretrain, rlp
        rlp_value = [h.value for h in history if h.step == 1][0]
        assert rlp_value == pytest.approx(float(by[(variant, "rlp")]["pass_at_1"]), abs=1e-4)

    # snakemake --report: builds, and holds the table and the plots with their captions.
    html = tmp_path / "report.html"
    built = run_snakemake(tmp_path, config, "--report", str(html), env=env())
    assert built.returncode == 0, built.stderr[-3000:]
    text = html.read_text(errors="replace")
    assert "table.csv" in text and "pass_at_1.png" in text and "curves.png" in text
    assert "unbiased estimator" in text  # the table's caption
