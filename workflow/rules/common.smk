# Validation, the plan (which stage nodes exist, shared between variants or not),
# and the paths every rule uses. The config is validated here, when the DAG is built.
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from slingshot.config import MODEL_CHAIN
from slingshot.plan import build_plan
from slingshot.validate import ConfigError, environment_problems, tracking_problems, validate_config
from slingshot.workflow import write_resolved_config

# Site files (cluster/<site>.yaml) are found next to this Snakefile, wherever it runs.
os.environ.setdefault("SLINGSHOT_SITE_DIR", str(Path(workflow.basedir) / "cluster"))

try:
    CFG = validate_config(config, workflow.configfiles)
    # Before any job: an unreachable tracking server would fail every stage, minutes in.
    # Not in a dry run, which starts no job (planning needs no server); Snakemake only
    # knows it is one after parsing the Snakefile, so read its command line.
    _dry_run = any(
        a in ("--dry-run", "--dryrun", "--dry_run")
        or (a[:1] == "-" and a[1:2] != "-" and a[1:].isalpha() and "n" in a[1:])
        for a in sys.argv[1:]
    )
    # The site's Python too: a job that cannot import torch would fail on its compute node.
    _runtime = [] if _dry_run else tracking_problems(CFG, workflow.configfiles) + environment_problems(CFG)
    if _runtime:
        raise ConfigError(_runtime)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

# One driver at a time: a `slingshot submit` job holds this directory while it is queued or running.
if not _dry_run:
    from slingshot.launch.driver import driver_conflict

    _driver_conflict = driver_conflict(CFG.work_dir)
    if _driver_conflict:
        raise WorkflowError(f"refused: {_driver_conflict}")

PLAN = build_plan(CFG)
RESULTS = str(CFG.results_dir)
# The launcher and the jobs read the config the DAG was built from.
RESOLVED_CONFIG = str(write_resolved_config(config, CFG))
ALL_TARGETS = [str(p) for p in PLAN.targets()]
# The launcher runs under the same interpreter as Snakemake (no PATH assumptions).
LAUNCH = (
    f"{shlex.quote(sys.executable)} -m slingshot.cli launch {{params.stage:q}} --variant {{params.variant:q}} "
    "--config {params.config:q} > {log:q} 2>&1"
)


wildcard_constraints:
    variant="|".join(CFG.variants),
    phase=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def node_of(stage_pattern):
    """The plan node a rule instance runs, from its wildcards."""
    return lambda wc: PLAN.node(wc.get("variant", ""), stage_pattern.format(**dict(wc.items())))


def upstream_of(stage_pattern):
    return lambda wc: [str(p) for p in PLAN.upstream_manifests(node_of(stage_pattern)(wc)).values()]


def digest_of(stage_pattern):
    return lambda wc: node_of(stage_pattern)(wc).digest


def stage_threads(stage_pattern):
    """Cores a rule holds on this machine: the job's CPUs when it runs here, one launcher otherwise."""

    def threads(wc):
        if CFG.launcher.backend == "slurm":
            return 1
        from slingshot.plan import stage_config

        section = stage_config(CFG, node_of(stage_pattern)(wc))
        res = section.resources if section else CFG.launcher.default_resources
        return res.cpus_per_task * res.effective_tasks_per_node

    return threads


def stage_rule_params(stage_pattern):
    """Params shared by every stage rule; the digest makes a config change rerun the stage."""
    return dict(
        stage=lambda wc: stage_pattern.format(**dict(wc.items())),
        variant=lambda wc: node_of(stage_pattern)(wc).owner or next(iter(CFG.variants)),
        config=RESOLVED_CONFIG,
        digest=digest_of(stage_pattern),
    )
