# Prismatic synthesis: generate, keep consensus answers, select for gradient diversity (G-Vendi).
rule synth:
    input:
        upstream_of("synth"),
    output:
        f"{RESULTS}/{{variant}}/synth/manifest.json",
    log:
        f"{RESULTS}/logs/{{variant}}.synth.log",
    params:
        **stage_rule_params("synth"),
    threads: stage_threads("synth")
    localrule: True
    shell:
        LAUNCH
