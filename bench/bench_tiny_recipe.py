"""Benchmark: wall time of the whole tiny recipe (both arms, every stage) through
profiles/local against the same recipe through profiles/slurm on the dev cluster.

Each profile runs `snakemake --profile PROFILE` on the default config from a clean
directory, one after the other on the same machine, and the script prints each wall
time, the slurm/local ratio, the machine, and the held-out evaluation table of each run
(results/report/table.csv). The Slurm run needs the dev cluster up (`cluster/dev/up.sh`);
it is skipped, with a line saying so, when `sinfo` does not answer.

These are the numbers in the README's "What the tiny recipe shows today".

Usage: python bench/bench_tiny_recipe.py [--profiles local slurm] [--config PATH] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def slurm_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def run_profile(profile: str, config: Path, directory: Path) -> float:
    """Wall seconds of one clean run; raises with the log tail if Snakemake fails."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "SLINGSHOT_SITE": "dev",
        "SLINGSHOT_SITE_DIR": str(REPO / "cluster"),
    }
    command = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--profile",
        str(REPO / "profiles" / profile),
        "--configfile",
        str(config),
        "--directory",
        str(directory),
    ]
    log = directory / "snakemake.log"
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"profiles/{profile} failed (exit {code}); {log}:\n{tail}")
    return wall


def print_table(directory: Path) -> None:
    print(pd.read_csv(directory / "results" / "report" / "table.csv").to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", nargs="+", default=["local", "slurm"], choices=["local", "slurm"])
    parser.add_argument("--config", type=Path, default=REPO / "workflow" / "config" / "config.yaml")
    parser.add_argument("--dir", type=Path, default=None, help="where the runs go (default: a temp dir)")
    args = parser.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="slingshot-bench-tiny-"))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, python {platform.python_version()}"
    )
    print(f"config: {args.config}")
    walls: dict[str, float] = {}
    for profile in args.profiles:
        if profile == "slurm" and not slurm_up():
            print("profiles/slurm: skipped, the dev cluster does not answer (run cluster/dev/up.sh)")
            continue
        directory = root / profile
        walls[profile] = run_profile(profile, args.config.resolve(), directory)
        minutes, seconds = divmod(round(walls[profile]), 60)
        print(
            f"profiles/{profile}: {walls[profile]:.0f} s ({minutes} min {seconds:02d} s), both arms, in {directory}"
        )
        print_table(directory)
    if {"local", "slurm"} <= walls.keys():
        print(f"ratio slurm/local: {walls['slurm'] / walls['local']:.2f}")


if __name__ == "__main__":
    main()
