# Evaluation of each stage's final model, per variant: pass@1, pass@k, length, parse rate.
# The per-family table is written by the job before its manifest; it is declared for
# `snakemake --report` unless the evaluate entrypoint is replaced (which owes only the manifest).
EVAL_FILES = (
    {}
    if "evaluate" in CFG.entrypoints
    else dict(
        table=report(
            f"{RESULTS}/{{variant}}/evaluate-{{model}}/eval_table.csv",
            caption="../report/eval_table.rst",
            category="Evaluation",
            subcategory="{variant}",
        )
    )
)


rule evaluate:
    input:
        upstream_of("evaluate-{model}"),
    output:
        manifest=f"{RESULTS}/{{variant}}/evaluate-{{model}}/manifest.json",
        **EVAL_FILES,
    log:
        f"{RESULTS}/logs/{{variant}}.evaluate-{{model}}.log",
    params:
        **stage_rule_params("evaluate-{model}"),
    wildcard_constraints:
        model="|".join(MODEL_CHAIN),
    threads: stage_threads("evaluate-{model}")
    localrule: True
    shell:
        LAUNCH
