# RLP: reinforcement as a pretraining objective (thought -> next token, information gain).
rule rlp:
    input:
        upstream_of("rlp"),
    output:
        f"{RESULTS}/{{variant}}/rlp/manifest.json",
    log:
        f"{RESULTS}/logs/{{variant}}.rlp.log",
    params:
        **stage_rule_params("rlp"),
    threads: stage_threads("rlp")
    localrule: True
    shell:
        LAUNCH
