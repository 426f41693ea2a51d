"""The recipe's claims on the tiny recipe, each over several seeds, with mean ± sd.

For every seed two pipelines run through profiles/local with ``pipeline.seed`` set to it;
each variant shares every node whose result it would repeat (the plan's digests), so a
control arm costs only the stages it changes.

``recipe`` (DIR/seed-<seed>): the tiny recipe (workflow/config/config.yaml) and two controls:

* ``flr`` / ``noreason``: the two pretraining arms; both SFT on the FLR arm's synthesized set
  (the no-reason arm's ``sft.synth_from: flr``, as in the tiny recipe), so after SFT only pretraining differs
  (no claim reads the no-reason arm's ProRL, so it is not run);
* ``random``: the FLR arm with SFT on the synthesis control set (the seeds plus a random
  subset of all quality-passed candidates, as many as the diversity filter selected);
* ``symclip``: the FLR arm with ProRL clipped symmetrically (ε_high = ε_low = 0.2, no
  controller) instead of clip-higher.

``rlp`` (DIR/rlp-seed-<seed>): the FLR arm up to RLP, and ``ntp``, the RLP paper's control:
the same RLP stage with ``objective: next_token`` (plain next-token training on the same
positions' context and targets, steps and optimizer; no thought).

Evaluation draws 16 samples per prompt (pass@16 needs n >= 16) on 16 held-out prompts per
family. Each claim is a paired difference between two arms of the same seed; it "holds"
when the mean difference exceeds twice its standard deviation over the seeds (and is
positive); "against" when it is that far below zero; otherwise "within noise".

Usage: python bench/claims.py [--seeds 1234 1235 1236] [--passes recipe rlp] [--dir DIR]
[--summarize-only] (2026-12-07, 2 cores shared with other runs: 42-48 min per seed for
``recipe``, 13-25 min for ``rlp``, not timed idle; the table is printed and written to
DIR/claims.md, the per-seed values to DIR/claims.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = REPO / "workflow" / "config" / "config.yaml"
ENTROPY_LAST_STEPS = 10  # ProRL's entropy claim: the mean over the phase's last steps


EVALUATE = {"n_samples": 16, "k": [1, 16], "prompts_per_task": 16}


def recipe_config(seed: int) -> dict[str, Any]:
    """The tiny recipe at ``seed``, the two control arms, and pass@16 evaluation."""
    from slingshot.config import deep_merge

    changes = {
        "pipeline": {"name": f"claims-{seed}", "seed": seed},
        "stages": {"evaluate": {"models": ["pretrain", "sft", "prorl"], **EVALUATE}},
        "variants": {
            "noreason": {"stages": {"prorl": {"enabled": False}}},  # no claim reads its ProRL
            "random": {
                "description": "FLR with SFT on the synthesis control set (random subset)",
                "stages": {
                    "sft": {"synth_dataset": "random_subset"},
                    "prorl": {"enabled": False},
                    "evaluate": {"models": ["sft"]},
                },
            },
            "symclip": {
                "description": "FLR with symmetric ProRL clipping (no clip-higher)",
                "stages": {
                    "prorl": {"eps_high": 0.2, "entropy_control": {"enabled": False}},
                    "evaluate": {"enabled": False},
                },
            },
        },
    }
    return deep_merge(yaml.safe_load(CONFIG.read_text()), changes)


def rlp_config(seed: int) -> dict[str, Any]:
    """The FLR arm up to RLP and its next-token control, the RLP models evaluated."""
    from slingshot.config import deep_merge

    changes = {
        "pipeline": {"name": f"claims-rlp-{seed}", "seed": seed},
        "stages": {
            **{kind: {"enabled": False} for kind in ("synth", "sft", "prorl")},
            "evaluate": {"models": ["rlp"], **EVALUATE},
        },
    }
    config = deep_merge(yaml.safe_load(CONFIG.read_text()), changes)
    config["variants"] = {
        "flr": config["variants"]["flr"],
        "ntp": {
            "description": "FLR with RLP's next-token control (same positions, no thought)",
            "stages": {"rlp": {"objective": "next_token"}},
        },
    }
    return config


PASSES = {"recipe": ("seed", recipe_config), "rlp": ("rlp-seed", rlp_config)}


@dataclass(frozen=True)
class Claim:
    name: str
    metric: str  # what is compared
    better: tuple[str, str]  # (variant/node, metric key) that should be higher ...
    worse: tuple[str, str]  # ... than this one
    run: str = "recipe"  # the pass whose results hold both


CLAIMS = [
    Claim(
        "FLR > no reasoning data, after pretraining",
        "pass@1",
        ("flr/evaluate-pretrain", "pass_at_1"),
        ("noreason/evaluate-pretrain", "pass_at_1"),
    ),
    Claim(
        "FLR > no reasoning data, after SFT on the same SFT set",
        "pass@1",
        ("flr/evaluate-sft", "pass_at_1"),
        ("noreason/evaluate-sft", "pass_at_1"),
    ),
    Claim(
        "Prismatic selection > random subset of the same size, downstream SFT",
        "pass@1",
        ("flr/evaluate-sft", "pass_at_1"),
        ("random/evaluate-sft", "pass_at_1"),
    ),
    Claim(
        "Prismatic selection > random subset of the same size, G-Vendi of the SFT set",
        "G-Vendi",
        ("flr/synth", "gvendi_pool"),
        ("flr/synth", "gvendi_random_subset_pool"),
    ),
    Claim("ProRL > SFT", "pass@1", ("flr/evaluate-prorl", "pass_at_1"), ("flr/evaluate-sft", "pass_at_1")),
    Claim("ProRL > SFT", "pass@16", ("flr/evaluate-prorl", "pass_at_16"), ("flr/evaluate-sft", "pass_at_16")),
    Claim(
        "clip-higher keeps entropy above symmetric clipping",
        f"entropy, last {ENTROPY_LAST_STEPS} steps",
        ("flr/prorl-len96", "entropy_tail"),
        ("symclip/prorl-len96", "entropy_tail"),
    ),
    Claim(
        "clip-higher keeps answers more diverse than symmetric clipping",
        "distinct answers / group",
        ("flr/prorl-len96", "distinct_answers_tail"),
        ("symclip/prorl-len96", "distinct_answers_tail"),
    ),
    Claim(
        "RLP > next-token training on the same positions",
        "pass@1",
        ("flr/evaluate-rlp", "pass_at_1"),
        ("ntp/evaluate-rlp", "pass_at_1"),
        run="rlp",
    ),
]


def run_pass(config: dict[str, Any], directory: Path) -> float:
    """One pipeline run of ``config`` in ``directory`` (resumed where it stopped); wall seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "claims-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--profile",
        str(REPO / "profiles" / "local"),
    ]
    command += ["--cores", "2", "--configfile", str(path), "--directory", str(directory)]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    log = directory / "snakemake.log"
    start = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{directory} failed (exit {code}); {log}:\n{log.read_text()[-3000:]}")
    return time.monotonic() - start


def tail_mean(client: Any, run_id: str, key: str, last: int) -> float:
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    values = [m.value for m in history[-last:]]
    if not values:
        raise KeyError(f"run {run_id} logged no {key}")
    return statistics.fmean(values)


def seed_values(directories: dict[str, Path], passes: list[str]) -> dict[str, dict[str, float]]:
    """node key -> the metrics the claims of ``passes`` read, from one seed's manifests (and
    MLflow); ``directories``: each pass's run directory."""
    from mlflow import MlflowClient

    values: dict[str, dict[str, float]] = {}
    for claim in CLAIMS:
        if claim.run not in passes:
            continue
        results = directories[claim.run] / "results"
        if not (results / "mlflow.db").is_file():  # the client would create an empty store
            raise SystemExit(f"{directories[claim.run]}: no finished {claim.run} run to summarize")
        client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
        for node, key in (claim.better, claim.worse):
            manifest = json.loads((results / node / "manifest.json").read_text())
            metrics = values.setdefault(f"{claim.run}:{node}", {})
            if key.endswith("_tail"):
                metrics[key] = tail_mean(
                    client, manifest["mlflow_run_id"], key[: -len("_tail")], ENTROPY_LAST_STEPS
                )
            else:
                metrics[key] = float(manifest["metrics"][key])
    return values


def verdict(differences: list[float]) -> str:
    if len(differences) < 2:
        return "one seed: no verdict"
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    if mean > 0 and mean > 2 * sd:
        return "holds (> 2 sd)"
    if mean < 0 and -mean > 2 * sd:
        return "against (< -2 sd)"
    return "within noise"


def machine() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def summarize(per_seed: dict[int, dict[str, dict[str, float]]], passes: list[str]) -> str:
    def stat(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

    seeds = sorted(per_seed)
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; {machine()}, "
        f"{os.cpu_count()} CPUs, {datetime.date.today().isoformat()}. Mean ± sd over seeds; the "
        "difference is paired by seed.",
        "",
        "| claim | metric | for | against | difference | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for claim in CLAIMS:
        if claim.run not in passes:
            continue
        better = [per_seed[s][f"{claim.run}:{claim.better[0]}"][claim.better[1]] for s in seeds]
        worse = [per_seed[s][f"{claim.run}:{claim.worse[0]}"][claim.worse[1]] for s in seeds]
        diff = [b - w for b, w in zip(better, worse, strict=True)]
        lines.append(
            f"| {claim.name} | {claim.metric} | {stat(better)} ({claim.better[0].split('/')[0]}) | "
            f"{stat(worse)} ({claim.worse[0].split('/')[0]}) | {stat(diff)} | {verdict(diff)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235, 1236])
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES))
    parser.add_argument("--dir", type=Path, default=REPO / "claims")
    parser.add_argument(
        "--summarize-only", action="store_true", help="read the seeds' finished runs in --dir"
    )
    args = parser.parse_args()
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        directories = {name: args.dir / f"{prefix}-{seed}" for name, (prefix, _) in PASSES.items()}
        for name in args.passes:
            if not args.summarize_only:
                wall = run_pass(PASSES[name][1](seed), directories[name])
                print(f"seed {seed}, {name}: {wall:.0f} s", flush=True)
        per_seed[seed] = seed_values(directories, args.passes)
    table = summarize(per_seed, args.passes)
    print(table)
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / "claims.md").write_text(table + "\n")
    (args.dir / "claims.json").write_text(json.dumps(per_seed, indent=2))


if __name__ == "__main__":
    main()
