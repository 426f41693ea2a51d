# Evaluation of each stage's final model, per variant: pass@1, pass@k, length, parse rate.
rule evaluate:
    input:
        upstream_of("evaluate-{model}"),
    output:
        f"{RESULTS}/{{variant}}/evaluate-{{model}}/manifest.json",
    log:
        f"{RESULTS}/logs/{{variant}}.evaluate-{{model}}.log",
    params:
        **stage_rule_params("evaluate-{model}"),
    wildcard_constraints:
        model="pretrain|rlp|sft|prorl",
    threads: stage_threads("evaluate-{model}")
    localrule: True
    shell:
        LAUNCH
