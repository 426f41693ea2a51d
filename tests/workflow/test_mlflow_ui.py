"""The pipeline's lineage as the MLflow UI shows it: a finished toy pipeline whose report
stage serves the store, renders the React UI in headless Chromium and checks it
(slingshot.report_ui), leaving screenshots in results/report/ and in `snakemake --report`.
With Chromium installed this is the report's default: the test sets nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient
from pipeline import pipeline_env, run_snakemake, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("chromium"), reason="needs the chromium executable"),
]


def test_report_renders_parent_stage_runs_and_datasets_in_the_ui(tmp_path):
    config = write_config(tmp_path, {"pipeline": {"name": "ui"}})
    config.write_text(config.read_text().replace("  report: toy_stage:run\n", ""))  # the real report
    env = pipeline_env()
    env.pop("SLINGSHOT_REPORT_MLFLOW_UI", None)
    out = run_snakemake(tmp_path, config, env=env, timeout=900)
    log = tmp_path / "results" / "logs" / "report.log"
    assert out.returncode == 0, (out.stderr[-3000:], log.read_text()[-3000:] if log.is_file() else "")

    report_dir = tmp_path / "results" / "report"
    for png in ("mlflow-ui.png", "mlflow-ui-run.png"):
        data = (report_dir / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png
    ui = json.loads((report_dir / "manifest.json").read_text())["report"]["mlflow_ui"]
    assert ui["url"].endswith("/runs")

    # What should be there, from the store itself (not from the server under test).
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    exp = client.get_experiment_by_name("ui")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    stages = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert stages == {"data", "main/pretrain-p1", "main/rlp", "main/evaluate-rlp", "report"}

    # The rendered runs page lists the variant's parent run; every stage run's page shows
    # its name, "Parent run: main" and its dataset inputs (the toy stages log one each).
    assert ui["parents_shown"] == ["main"]
    pages = {page["name"]: page for page in ui["run_pages"]}
    assert set(pages) == stages
    for name, page in pages.items():
        assert page["name_shown"] and page["parent_shown"], page
        if name != "report":
            assert page["datasets_shown"] == {"toy-regression": True}, page
    assert all(page["ok"] for page in pages.values())
    dom = (report_dir / "mlflow-ui.dom.html").read_text()
    assert "Training runs" in dom and ">main<" in dom

    # The screenshots are artifacts of the report run and of the parent run.
    report_run = json.loads((report_dir / "manifest.json").read_text())["mlflow_run_id"]
    assert "report/mlflow-ui.png" in {f.path for f in client.list_artifacts(report_run, "report")}
    assert "report/mlflow-ui.png" in {f.path for f in client.list_artifacts(parent.info.run_id, "report")}

    # snakemake --report holds both screenshots with their captions.
    html = tmp_path / "report.html"
    built = run_snakemake(tmp_path, config, "--report", str(html), env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    text = html.read_text(errors="replace")
    assert "mlflow-ui.png" in text and "mlflow-ui-run.png" in text
    assert "The MLflow UI as a user sees it" in text
