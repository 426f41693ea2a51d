# The comparison across stages and variants: one table and plots, for `snakemake --report`
# and as MLflow artifacts. The manifest (written by the launcher's job, last) marks the
# node done; the table and plots are written by the same job before it and are declared
# here so `snakemake --report` shows them. A replaced report entrypoint
# (`entrypoints: {report: ...}`, e.g. the test pipelines' toy stage) owes only the manifest.
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
        LAUNCH
