# The comparison across stages and variants: one table and plots, for `snakemake --report`
# and as MLflow artifacts.
rule report:
    input:
        upstream_of("report"),
    output:
        f"{RESULTS}/report/manifest.json",
    log:
        f"{RESULTS}/logs/report.log",
    params:
        **stage_rule_params("report"),
    threads: stage_threads("report")
    localrule: True
    shell:
        LAUNCH
