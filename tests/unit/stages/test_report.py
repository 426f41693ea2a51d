"""Report stage on hand-written evaluation manifests: the benchmark table beside the stage table."""

from __future__ import annotations

import csv
from pathlib import Path

from stages import make_ctx, pipeline_config

from slingshot.stages import report


def test_report_writes_a_benchmark_table_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("SLINGSHOT_REPORT_MLFLOW_UI", "0")
    bench = [{"name": "gsm8k", "format": "gsm8k", "path": str(tmp_path / "gsm8k.jsonl")}]
    cfg = pipeline_config(
        tmp_path,
        {
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
            "stages": {"evaluate": {"models": ["sft"], "n_samples": 2, "k": [1, 2], "benchmarks": bench}},
        },
    )
    metrics = {"prompts": 4.0, "pass_at_1": 0.5, "bench/gsm8k/prompts": 2.0, "bench/gsm8k/pass_at_1": 0.25}
    upstream = {"main/evaluate-sft": {"kind": "evaluate", "metrics": metrics}}
    result = report.run(make_ctx(tmp_path, "report", cfg, upstream, variant="", stage="report"))
    with open(result.outputs["benchmarks_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["stage"], r["benchmark"], r["prompts"], r["pass_at_1"]) for r in rows] == [
        ("sft", "gsm8k", "2", "0.2500")
    ]
    assert "| main | sft | gsm8k | 2 | 0.2500 |" in Path(result.outputs["benchmarks_md"]).read_text()
    assert result.metrics == {"main/sft/pass_at_1": 0.5, "main/sft/bench/gsm8k/pass_at_1": 0.25}
    assert result.extra["report"]["benchmark_rows"][0]["pass_at_2"] is None  # NaN -> null
