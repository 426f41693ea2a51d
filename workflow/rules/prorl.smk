# ProRL: prolonged GRPO/DAPO; each phase of the length schedule is its own job.
rule prorl:
    input:
        upstream_of("prorl-{phase}"),
    output:
        f"{RESULTS}/{{variant}}/prorl-{{phase}}/manifest.json",
    log:
        f"{RESULTS}/logs/{{variant}}.prorl-{{phase}}.log",
    params:
        **stage_rule_params("prorl-{phase}"),
    threads: stage_threads("prorl-{phase}")
    localrule: True
    shell:
        LAUNCH
