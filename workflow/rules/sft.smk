# SFT on the synthesized long chain-of-thought data (and optional user data).
rule sft:
    input:
        upstream_of("sft"),
    output:
        f"{RESULTS}/{{variant}}/sft/manifest.json",
    log:
        f"{RESULTS}/logs/{{variant}}.sft.log",
    params:
        **stage_rule_params("sft"),
    threads: stage_threads("sft")
    localrule: True
    shell:
        LAUNCH
