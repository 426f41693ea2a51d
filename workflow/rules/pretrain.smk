# Front-loaded reasoning pretraining on Megatron-Core: one job per phase (phase 2 adds reasoning data).
rule pretrain:
    input:
        upstream_of("pretrain-{phase}"),
    output:
        f"{RESULTS}/{{variant}}/pretrain-{{phase}}/manifest.json",
    log:
        f"{RESULTS}/logs/{{variant}}.pretrain-{{phase}}.log",
    params:
        **stage_rule_params("pretrain-{phase}"),
    threads: stage_threads("pretrain-{phase}")
    localrule: True
    shell:
        LAUNCH
