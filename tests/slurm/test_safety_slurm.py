"""Safe defaults on the real cluster: values reaching the batch script are quoted, work and
submitit folders are private to the user."""

import stat

import yaml
from pipeline import REPO, events, pipeline_env, run_snakemake, slurm_overrides, write_config

KEY = "main/pretrain-p1"
HOSTILE = "a; touch PWNED1 $(touch PWNED2) `touch PWNED3` 'single' \"double\" \\ end"


def test_hostile_values_reach_the_job_verbatim_and_run_nothing(tmp_path):
    site = yaml.safe_load((REPO / "cluster" / "dev.yaml").read_text())
    site["env"] = {**site.get("env", {}), "SLINGSHOT_PROBE": HOSTILE}
    site_file = tmp_path / "hostile-site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    overrides = slurm_overrides("quoting")
    overrides["launcher"]["site"] = str(site_file)
    config = write_config(tmp_path, overrides)
    out = run_snakemake(tmp_path, config, "--until", "pretrain", env=pipeline_env(TOY_STEPS="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert {e["probe"] for e in events(tmp_path, KEY)} == {HOSTILE}
    for name in ("PWNED1", "PWNED2", "PWNED3"):
        assert not list(tmp_path.rglob(name)) and not (REPO / name).exists()
    script = next((tmp_path / "work" / KEY / "submitit").glob("*_submission.sh")).read_text()
    assert "--requeue" in script and "--signal=USR2@" in script


def test_work_and_submitit_folders_are_private(tmp_path):
    config = write_config(tmp_path, slurm_overrides("private"))
    out = run_snakemake(tmp_path, config, "--until", "pretrain", env=pipeline_env(TOY_STEPS="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    for folder in (tmp_path / "work" / KEY, tmp_path / "work" / KEY / "submitit"):
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert mode & 0o077 == 0, f"{folder} is {oct(mode)}"
