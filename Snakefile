# slingshot: the small-reasoning-model recipe as a DAG of stage jobs.
# Each compute rule is a local rule running `slingshot launch`, which submits the
# stage through submitit (Slurm, a local process, or in-process) and follows it.
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The embedded tiny recipe, unless --configfile names others: a recipe is complete on its
# own (over the typed defaults in slingshot.config), never merged into the tiny one.
if not workflow.overwrite_configfiles:

    configfile: str(Path(workflow.basedir) / "workflow" / "config" / "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/rlp.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/prorl.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
