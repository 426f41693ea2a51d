# The comparison across stages and variants: one table and plots, for `snakemake --report`
# and as MLflow artifacts. The manifest (written by the launcher's job, last) marks the
# node done; the table and plots are written by the same job before it and are declared
# here so `snakemake --report` shows them. A replaced report entrypoint
# (`entrypoints: {report: ...}`, e.g. the test pipelines' toy stage) owes only the manifest.
from slingshot.report_ui import UI_ENV, ui_wanted


report: "../report/workflow.rst"


REPORT_DIR = f"{RESULTS}/report"
if "report" in CFG.entrypoints:
    REPORT_FILES = {}
else:
    REPORT_FILES = dict(
        table=report(
            f"{REPORT_DIR}/table.csv",
            caption="../report/table.rst",
            category="Comparison",
            labels={"figure": "pass@k table"},
        ),
        table_md=f"{REPORT_DIR}/table.md",
        pass_at_1=report(
            f"{REPORT_DIR}/pass_at_1.png",
            caption="../report/pass_at_1.rst",
            category="Comparison",
            labels={"figure": "pass@1 by stage"},
        ),
        curves=report(
            f"{REPORT_DIR}/curves.png",
            caption="../report/curves.rst",
            category="Training",
            labels={"figure": "learning curves"},
        ),
    )
# The MLflow UI screenshots: decided here (the report runs on this host) and handed to the
# job, so the rule declares exactly what the job writes.
MLFLOW_UI = "report" not in CFG.entrypoints and ui_wanted()
if MLFLOW_UI:
    REPORT_FILES.update(
        mlflow_ui=report(
            f"{REPORT_DIR}/mlflow-ui.png",
            caption="../report/mlflow_ui.rst",
            category="Tracking",
            labels={"figure": "MLflow UI: runs"},
        ),
        mlflow_ui_run=report(
            f"{REPORT_DIR}/mlflow-ui-run.png",
            caption="../report/mlflow_ui_run.rst",
            category="Tracking",
            labels={"figure": "MLflow UI: a stage run"},
        ),
    )


rule report:
    input:
        upstream_of("report"),
    output:
        manifest=f"{REPORT_DIR}/manifest.json",
        **REPORT_FILES,
    log:
        f"{RESULTS}/logs/report.log",
    params:
        **stage_rule_params("report"),
    threads: stage_threads("report")
    localrule: True
    shell:
        f"{UI_ENV}={int(MLFLOW_UI)} " + LAUNCH
