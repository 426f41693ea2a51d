"""`snakemake --profile slurm` works after the documented install step."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_profiles_install_makes_named_profiles_findable(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "SLINGSHOT_SITE": "dev",
        "SLINGSHOT_PROFILES": str(REPO / "profiles"),
    }
    subprocess.run([str(BIN / "slingshot"), "profiles", "install"], env=env, check=True, capture_output=True)
    for name in ("local", "slurm"):
        link = home / ".config" / "snakemake" / name
        assert link.is_symlink() and (link / "config.yaml").is_file()
    run = tmp_path / "run"
    run.mkdir()
    out = subprocess.run(
        [
            str(BIN / "snakemake"),
            "-s",
            str(REPO / "Snakefile"),
            "--profile",
            "slurm",
            "-n",
            "--directory",
            str(run),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Using profile slurm" in out.stdout + out.stderr
    resolved = (run / "work" / "pipeline-config.yaml").read_text()
    assert "backend: slurm" in resolved  # the profile switched the launcher to Slurm
