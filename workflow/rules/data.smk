# Data: task splits, teacher reasoning traces, general text, tokenizer, Megatron
# indexed corpora. One node shared by every variant.
rule data:
    output:
        f"{RESULTS}/data/manifest.json",
    log:
        f"{RESULTS}/logs/data.log",
    params:
        **stage_rule_params("data"),
    threads: stage_threads("data")
    localrule: True
    shell:
        LAUNCH
