"""The driver's pieces that need no Slurm: the environment it gives Snakemake, where the
pipeline lives, which finished stages Snakemake still marks incomplete, the site's driver
section, the lock record. (The driver job itself: tests/slurm/test_driver_slurm.py.)"""

import base64
from pathlib import Path

import pytest
import yaml

from slingshot.config import PipelineConfig
from slingshot.launch.driver import (
    DriverLock,
    SubmitError,
    clean_env,
    driver_conflict,
    driver_dir,
    driver_executor,
    driver_section,
    incomplete_manifests,
    parse_target,
)
from slingshot.launch.site import DriverSection


def test_clean_env_drops_the_job_variables_a_nested_sbatch_or_srun_would_read():
    env = {
        "SLURM_MEM_PER_NODE": "1024",
        "SLURM_CPUS_PER_TASK": "2",
        "SBATCH_PARTITION": "cpu",
        "SRUN_CPUS_PER_TASK": "2",
        "SUBMITIT_EXECUTOR": "slurm",
        "PATH": "/bin",
        "MY_SLURM_NOTE": "kept",
    }
    assert clean_env(env) == {"PATH": "/bin", "MY_SLURM_NOTE": "kept"}


def test_parse_target_reads_directory_and_the_last_configfile(tmp_path):
    target = parse_target(
        ["--cores", "4", "-d", str(tmp_path), "--configfile", "a.yaml", "b.yaml", "--until", "x"]
    )
    assert target.directory == tmp_path and target.config_path == Path("b.yaml")
    default = parse_target(["-s", str(tmp_path / "Snakefile")])
    assert default.directory == Path.cwd()
    assert default.config_path == tmp_path / "workflow" / "config" / "config.yaml"


def _mark_incomplete(directory: Path, path: str) -> None:
    # Snakemake's file persistence: the urlsafe base64 of the output path under .snakemake/incomplete.
    name = base64.urlsafe_b64encode(path.encode()).decode()
    marker = directory / ".snakemake" / "incomplete" / name
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")


def test_incomplete_manifests_lists_the_marked_manifests_only(tmp_path):
    done = tmp_path / "results" / "main" / "rlp" / "manifest.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    (tmp_path / "results" / "logs").mkdir()
    (tmp_path / "results" / "logs" / "x.log").write_text("")
    _mark_incomplete(tmp_path, "results/main/rlp/manifest.json")
    _mark_incomplete(tmp_path, "results/main/sft/manifest.json")  # not written: still running
    _mark_incomplete(tmp_path, "results/logs/x.log")  # not a manifest
    # Finished meanwhile or still running: neither mark is needed (manifests are written last, atomically).
    assert incomplete_manifests(tmp_path) == [
        "results/main/rlp/manifest.json",
        "results/main/sft/manifest.json",
    ]
    assert incomplete_manifests(tmp_path / "nothing") == []


def _site(tmp_path: Path, **driver) -> Path:
    raw = {"name": "t", "default_partition": "p", "partitions": {"p": {}}}
    if driver:
        raw["driver"] = driver
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("driver", [{}, {"time_min": 10}])
def test_a_site_without_a_driver_partition_is_refused_naming_key_and_file(tmp_path, driver):
    path = _site(tmp_path, **driver)
    with pytest.raises(SubmitError, match=rf"^{path}: driver.partition is not set"):
        driver_section(str(path))


def test_the_lock_round_trips_and_counts_requeues(tmp_path):
    folder = driver_dir(tmp_path / "work")
    folder.mkdir(parents=True)
    lock = DriverLock(folder / "driver.json", "42", 1.0, "/log", ["--cores", "1"])
    assert lock.requeues == 0
    lock.starts += [{"restart": 0, "node": "n1", "at": 2.0}, {"restart": 2, "node": "n2", "at": 3.0}]
    lock.save()
    again = DriverLock.load(tmp_path / "work")
    assert again == lock and again.requeues == 2
    assert DriverLock.load(tmp_path / "elsewhere") is None
    assert driver_conflict(tmp_path / "elsewhere") is None  # no lock: nothing to refuse


def test_the_driver_job_runs_the_sites_python_after_its_setup_lines(tmp_path):
    # The driver's Snakemake starts the stage launchers: it must run in the site's environment,
    # not in the interpreter the login node submitted with.
    raw = {
        "name": "t",
        "default_partition": "p",
        "partitions": {"p": {}},
        "account": "proj1",
        "env": {"HF_HOME": "/scratch/hf cache"},
        "setup": ["module load cuda/12.4"],
        "python": "/shared/envs/slingshot/bin/python",
        "sbatch": {"reservation": "ai"},
        "driver": {"partition": "p"},
    }
    site_path = tmp_path / "t.yaml"
    site_path.write_text(yaml.safe_dump(raw))
    cfg = PipelineConfig.model_validate({"pipeline": {"name": "demo"}, "launcher": {"site": str(site_path)}})
    executor = driver_executor(cfg, DriverSection.model_validate(raw["driver"]), tmp_path / "driver")
    slurm = executor._executor
    script = slurm._make_submission_file_text(slurm._submitit_command_str, "uid")
    setup = script.index("module load cuda/12.4")
    assert script.index("export HF_HOME='/scratch/hf cache'") < setup
    assert setup < script.index("/shared/envs/slingshot/bin/python -u -m submitit.core._submit")
    assert "#SBATCH --account=proj1" in script and "#SBATCH --reservation=ai" in script
    assert "#SBATCH --requeue" in script and "#SBATCH --partition=p" in script
