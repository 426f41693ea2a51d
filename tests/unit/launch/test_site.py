"""Site files and the Slurm parameters a stage's resources get on a site."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from slingshot.config import Resources
from slingshot.launch.site import SiteError, load_site, slurm_parameters


def test_a_site_is_found_by_name_in_the_site_dir_or_by_path(site_file: Path, monkeypatch):
    monkeypatch.setenv("SLINGSHOT_SITE_DIR", str(site_file.parent))
    assert load_site("testsite").name == "testsite"
    assert load_site(str(site_file)).default_partition == "cpu"
    monkeypatch.setenv("SLINGSHOT_SITE", "testsite")
    assert load_site(None).account == "site-account"


def test_missing_and_malformed_site_files_are_site_errors(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SLINGSHOT_SITE", raising=False)
    with pytest.raises(SiteError, match="no site given"):
        load_site(None)
    with pytest.raises(SiteError, match=r"site file '.*nowhere.yaml' not found"):
        load_site(str(tmp_path / "nowhere.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndefault_partition: cpu\npartitions: {cpu: {gpus: 1}}\n")
    with pytest.raises(SiteError, match="bad.yaml"):
        load_site(str(bad))


def test_check_names_each_resource_the_partition_cannot_give(site_file: Path):
    site = load_site(str(site_file))
    assert site.check(Resources()) == []
    problems = site.check(Resources(gpus_per_node=1, time_min=121, cpus_per_task=3, tasks_per_node=3))
    assert problems == [
        "gpus_per_node: 1 GPUs requested but partition 'cpu' of site 'testsite' has 0 per node",
        "time_min: 121 exceeds partition 'cpu' limit 120",
        "cpus_per_task: 9 CPUs per node requested, partition 'cpu' has 8",
    ]
    assert site.check(Resources(partition="gpu", gpus_per_node=4, nodes=3)) == [
        "nodes: 3 requested, partition 'gpu' allows 2"
    ]
    assert site.check(Resources(partition="huge")) == [
        "partition: partition 'huge' is not defined in site 'testsite' (has: cpu, gpu)"
    ]


def test_slurm_parameters_take_the_site_defaults(site_file: Path):
    params = slurm_parameters(load_site(str(site_file)), Resources())
    assert params == {
        "slurm_partition": "cpu",
        "slurm_setup": [
            "export GREETING='hello world; echo injected'",
            "export QUOTE='it'\"'\"'s $HOME'",
            "export PYTHONUNBUFFERED=1",
            "module load python",
        ],
        "slurm_additional_parameters": {"exclusive": "user"},
        "slurm_account": "site-account",
        "slurm_qos": "normal",
    }


def test_the_stage_resources_win_over_the_site(site_file: Path):
    resources = Resources(
        partition="gpu",
        account="mine",
        qos="high",
        constraint="h100",
        setup=["source env.sh"],
        extra_sbatch={"exclusive": "mcs", "comment": "x"},
    )
    params = slurm_parameters(load_site(str(site_file)), resources)
    assert params["slurm_partition"] == "gpu"
    assert (params["slurm_account"], params["slurm_qos"], params["slurm_constraint"]) == (
        "mine",
        "high",
        "h100",
    )
    assert params["slurm_setup"][-2:] == ["module load python", "source env.sh"]  # the site's lines first
    assert params["slurm_additional_parameters"] == {"exclusive": "mcs", "comment": "x"}


def test_exported_values_reach_the_shell_literally(site_file: Path):
    exports = slurm_parameters(load_site(str(site_file)), Resources())["slurm_setup"][:3]
    script = "\n".join([*exports, 'printf "%s|%s|%s" "$GREETING" "$QUOTE" "$PYTHONUNBUFFERED"'])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"HOME": "/home/x"})
    env = yaml.safe_load(site_file.read_text())["env"]
    assert out.stdout == f"{env['GREETING']}|{env['QUOTE']}|1"
