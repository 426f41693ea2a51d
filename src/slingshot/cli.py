"""The `slingshot` command.

slingshot launch STAGE --variant V --config FILE   run one stage node (what each rule calls)
slingshot validate [CONFIG]                         validate a pipeline config, print the plan
slingshot schema                                    print the config's JSON schema
slingshot profiles install                          install the Snakemake profiles for --profile
slingshot status [--config FILE] [--cost]           stage table: state, job, progress, metric, run; cost
slingshot plan --memory CONFIG [--gpu-memory-gb G]  per-GPU memory plan of the training stages
slingshot submit [SNAKEMAKE ARGS]                   run Snakemake as a requeueing Slurm job; returns at once
slingshot cancel [--config FILE]                    end the driver job and this pipeline's stage jobs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

DEFAULT_CONFIG = "workflow/config/config.yaml"


def _cmd_launch(args: argparse.Namespace) -> int:
    from slingshot.launch.launcher import launch_main

    return launch_main(args.config, args.variant, args.stage)


def _cmd_validate(args: argparse.Namespace) -> int:
    from slingshot.plan import build_plan
    from slingshot.validate import ConfigError, environment_problems, load_pipeline_config, tracking_problems

    try:
        cfg = load_pipeline_config(args.config)
        problems = tracking_problems(cfg, [Path(args.config)]) + environment_problems(cfg)
        if problems:
            raise ConfigError(problems)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    plan = build_plan(cfg)
    for node in plan.ordered():
        shared = f"  (shared by {', '.join(node.variants)})" if node.owner and len(node.variants) > 1 else ""
        print(f"{node.key:40s} <- {', '.join(node.upstream) or '-'}{shared}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from slingshot.config import PipelineConfig

    print(json.dumps(PipelineConfig.model_json_schema(), indent=2, sort_keys=True))
    return 0


def profiles_source() -> Path:
    return Path(os.environ.get("SLINGSHOT_PROFILES", "profiles"))


def _cmd_profiles(args: argparse.Namespace) -> int:
    """Snakemake finds `--profile NAME` in ~/.config/snakemake/NAME, not in profiles/: link them there."""
    target_root = Path(args.target or Path.home() / ".config" / "snakemake")
    target_root.mkdir(parents=True, exist_ok=True)
    source_root = profiles_source().resolve()
    for source in sorted(p for p in source_root.iterdir() if (p / "config.yaml").is_file()):
        target = target_root / source.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        target.symlink_to(source, target_is_directory=True)
        print(f"profile '{source.name}': {target} -> {source}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from slingshot.status import print_status

    return print_status(args.config, cost=args.cost)


def _cmd_plan(args: argparse.Namespace) -> int:
    """Print each training stage's memory plan per rank; exit 1 when one does not fit."""
    import yaml
    from pydantic import ValidationError

    from slingshot.config import PipelineConfig
    from slingshot.launch.site import SiteError, load_site
    from slingshot.memory_plan import GIB, pipeline_plans

    # The schema only, not the DAG checks: this command is how a user finds out why a
    # stage does not fit, on any machine, before the weights are there.
    try:
        cfg = PipelineConfig.model_validate(yaml.safe_load(Path(args.memory).read_text()) or {})
    except (OSError, yaml.YAMLError, ValidationError) as error:
        print(f"{args.memory}: {error}", file=sys.stderr)
        return 2
    gpu_gb, source = args.gpu_memory_gb, "--gpu-memory-gb"
    if gpu_gb is None and (args.site or cfg.launcher.site or os.environ.get("SLINGSHOT_SITE")):
        try:
            site = load_site(args.site or cfg.launcher.site)
        except SiteError as error:
            print(f"launcher.site: {error}", file=sys.stderr)
            return 2
        name, partition = site.partition_for(cfg.launcher.default_resources)
        gpu_gb, source = partition.gpu_memory_gb, f"partition '{name}' of site '{site.name}'"
    status = 0
    for variant, plan in pipeline_plans(cfg):
        gpu_bytes = gpu_gb * GIB if gpu_gb else None
        print(f"[{variant}] {plan.describe(gpu_bytes)}")
        if gpu_bytes:
            limit = plan.limit_bytes(gpu_bytes)
            fits = plan.training_bytes <= limit
            status |= 0 if fits else 1
            verdict = "fits" if fits else "DOES NOT FIT"
            print(f"    {verdict}: {limit / GIB:.2f} GiB for training of {gpu_gb:g} GiB ({source})")
    return status


def _cmd_submit(args: argparse.Namespace) -> int:
    from slingshot.launch.driver import SubmitError, submit
    from slingshot.launch.site import SiteError
    from slingshot.validate import ConfigError

    try:
        lock = submit(args.snakemake_args)
    except (SubmitError, SiteError, ConfigError, FileNotFoundError) as error:
        print(f"slingshot submit: {error}", file=sys.stderr)
        return 2
    print(f"submitted driver job {lock.job_id}; log: {lock.log}")
    print("follow it with `slingshot status`, stop it with `slingshot cancel`")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from slingshot.launch.driver import cancel
    from slingshot.status import default_config_path
    from slingshot.validate import ConfigError, load_pipeline_config

    try:
        cfg = load_pipeline_config(args.config or default_config_path())
    except (ConfigError, FileNotFoundError) as error:
        print(f"slingshot cancel: {error}", file=sys.stderr)
        return 2
    cancelled = cancel(cfg)
    print(f"cancelled {len(cancelled)} job(s): {' '.join(cancelled) or '-'}; checkpoints are kept")
    return 0


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=None, help="default: the config of the last DAG build, else " + DEFAULT_CONFIG
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="slingshot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("launch", help="run one stage node through submitit (called by the Snakemake rules)")
    p.add_argument("stage", help="stage node name, e.g. pretrain-phase1, rlp, evaluate-sft")
    p.add_argument("--variant", required=True)
    p.add_argument("--config", required=True, help="the resolved pipeline config the DAG was built from")
    p.set_defaults(func=_cmd_launch)

    p = sub.add_parser("validate", help="validate a pipeline config and print its plan")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("schema", help="print the JSON schema of the pipeline config")
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("profiles", help="install the Snakemake profiles (local, slurm) for --profile NAME")
    p.add_argument("action", choices=["install"])
    p.add_argument("--target", help="directory to install into (default ~/.config/snakemake)")
    p.set_defaults(func=_cmd_profiles)

    p = sub.add_parser(
        "status", help="table of variant x stage: state, job, restarts, elapsed, metric, run id"
    )
    _add_config_option(p)
    p.add_argument(
        "--cost",
        action="store_true",
        help="also per stage: elapsed, GPU-hours, CPU-hours, queue wait, requeues",
    )
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("plan", help="per-GPU memory plan of the training stages (no weights needed)")
    p.add_argument("--memory", required=True, metavar="CONFIG", help="the pipeline config to plan")
    p.add_argument(
        "--site", default=None, help="cluster/<site>.yaml to check against (default launcher.site)"
    )
    p.add_argument("--gpu-memory-gb", type=float, default=None, help="check against this GPU size instead")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "submit",
        help="submit Snakemake as a Slurm job on the site's driver partition (requeued before its time limit)",
    )
    p.add_argument(
        "snakemake_args", nargs=argparse.REMAINDER, help="passed to snakemake, e.g. --profile slurm"
    )
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser(
        "cancel", help="end the driver job and this pipeline's stage jobs (checkpoints are kept)"
    )
    _add_config_option(p)
    p.set_defaults(func=_cmd_cancel)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["submit"] and argv[1:2] not in (["-h"], ["--help"]):
        # Everything after `submit` is Snakemake's, options included (argparse would claim them).
        return _cmd_submit(argparse.Namespace(snakemake_args=argv[1:]))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
