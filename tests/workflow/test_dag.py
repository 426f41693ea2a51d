"""The DAG Snakemake builds: exactly the expected jobs, shared stages, mid-recipe entry."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from slingshot.plan import build_plan
from slingshot.validate import load_pipeline_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def dry_run(tmp_path, *args, env=None):
    out = subprocess.run(
        [
            str(BIN / "snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "-n",
            "--cores",
            "1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    return out


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_default_dag_lists_exactly_the_expected_jobs(tmp_path):
    out = dry_run(tmp_path, "--configfile", str(REPO / "workflow/config/config.yaml"))
    assert out.returncode == 0, out.stderr + out.stdout
    # Two arms share data and pretraining phase 1, and the FLR arm's synthesis (sft.synth_from);
    # everything else after phase 1 is per arm.
    assert job_counts(out.stdout) == {
        "data": 1,
        "pretrain": 3,
        "rlp": 2,
        "synth": 1,
        "sft": 2,
        "prorl": 2,
        "evaluate": 8,
        "report": 1,
        "all": 1,
        "total": 21,
    }


def test_shared_nodes_are_owned_by_the_first_variant():
    plan = build_plan(load_pipeline_config(REPO / "workflow/config/config.yaml"))
    shared = plan.node("noreason", "pretrain-phase1")
    assert shared.key == "flr/pretrain-phase1" and shared.variants == ["flr", "noreason"]
    assert plan.node("noreason", "pretrain-phase2").model_from == "flr/pretrain-phase1"
    assert plan.node("noreason", "pretrain-phase2").key == "noreason/pretrain-phase2"


def test_identical_variants_share_every_stage(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        (REPO / "workflow/config/config.yaml")
        .read_text()
        .replace("  noreason:\n", "  twin: {}\n  noreason:\n")
    )
    plan = build_plan(load_pipeline_config(cfg_path))
    assert all("twin" not in n.owner for n in plan.nodes.values())
    assert plan.node("twin", "sft").key == "flr/sft"


def test_mid_recipe_entry_has_no_upstream_stage(tmp_path, monkeypatch):
    model = tmp_path / "base"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model / name).write_text("{}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stages:\n  pretrain: {enabled: false}\n"
        f"  rlp: {{init_model: {model}}}\n  evaluate: {{models: [rlp, sft, prorl], n_samples: 4, k: [1]}}\n"
    )
    out = dry_run(tmp_path, "--configfile", str(cfg))
    assert out.returncode == 0, out.stderr + out.stdout
    assert job_counts(out.stdout) == {
        "data": 1,
        "rlp": 1,
        "synth": 1,
        "sft": 1,
        "prorl": 1,
        "evaluate": 3,
        "report": 1,
        "all": 1,
        "total": 10,
    }
    rlp = build_plan(load_pipeline_config(cfg)).node("main", "rlp")
    assert rlp.model_from is None and rlp.init_model == str(model) and rlp.upstream == ["data"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stages:\n  rlp:\n    group_sise: 4\n", "stages.rlp.group_sise: unknown key"),
        ("stages:\n  sft:\n    epochs: many\n", "stages.sft.epochs"),
        ("stages:\n  rlp:\n    resources: {gpus_per_node: -1}\n", "stages.rlp.resources.gpus_per_node"),
        (
            "stages:\n  pretrain: {enabled: false}\n  rlp: {init_model: /nonexistent/model}\n",
            "stages.rlp.init_model: '/nonexistent/model' is not a directory",
        ),
    ],
    ids=["unknown-key", "wrong-type", "negative-gpus", "missing-model"],
)
def test_bad_configs_fail_when_the_dag_is_built(tmp_path, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = dry_run(tmp_path, "--configfile", str(cfg))
    assert out.returncode != 0
    assert expected in out.stderr + out.stdout
    assert not (tmp_path / "results").exists()


# The shipped real recipe's dry run, on tiny stand-ins for its models and benchmarks: test_real_recipe.py.
