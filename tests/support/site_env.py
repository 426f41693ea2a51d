"""Second Python environments and sites for the site-file tests, and a tracking server.

- :func:`make_env`: a venv made from the base interpreter (so its ``bin/python`` is not the
  one running the tests) that sees this test environment's packages through a ``.pth``
  file, or none of them but slingshot's source (``with_torch=False``: an env lacking torch).
- :func:`site_file`: the dev site (cluster/dev.yaml) with some keys replaced, as a file.
- :class:`TrackingServer`: cluster/mlflow/serve.sh and stop.sh on one store directory
  and one free port (basic auth: the pipeline's credentials in ``DIR/credentials``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def make_env(directory: Path, with_torch: bool = True) -> Path:
    """A venv at ``directory``; returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lines = [str(REPO / "src")]
    if with_torch:
        # site.addsitedir also runs the .pth files there (editable installs and the like).
        lines.append(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})")
    (Path(purelib) / "slingshot-test-env.pth").write_text("\n".join(lines) + "\n")
    return python


def site_file(directory: Path, name: str = "site", **keys: Any) -> Path:
    raw = yaml.safe_load((REPO / "cluster" / "dev.yaml").read_text())
    raw.update(keys)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """cluster/mlflow/serve.sh and stop.sh on one store directory and one port."""

    def __init__(self, directory: Path, site: Path | None = None):
        """On a free port, or where ``site``'s ``tracking`` section says (serve.sh reads it)."""
        self.directory = directory
        bin_dir = Path(sys.executable).parent
        self.env = {**os.environ, "MLFLOW_START_TIMEOUT": "180", "MLFLOW_BIN": str(bin_dir / "mlflow")}
        if site is None:
            host, self.port = "127.0.0.1", free_port()
            self.env["MLFLOW_PORT"] = str(self.port)
        else:
            tracking = yaml.safe_load(site.read_text())["tracking"]
            host, self.port = tracking["host"], int(tracking["port"])
            self.env["SLINGSHOT_SITE"] = str(site)
        self.uri = f"http://{host}:{self.port}"

    @property
    def credentials_file(self) -> Path:
        return self.directory / "credentials"

    @property
    def credentials(self) -> dict[str, str]:
        """MLFLOW_TRACKING_USERNAME and _PASSWORD of the pipeline's user."""
        lines = self.credentials_file.read_text().split()
        return dict(line.split("=", 1) for line in lines)

    def start(self) -> None:
        out = subprocess.run(
            ["bash", str(REPO / "cluster/mlflow/serve.sh"), str(self.directory)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stderr[-3000:]

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(REPO / "cluster/mlflow/stop.sh"), str(self.directory)],
            env=self.env,
            capture_output=True,
            timeout=60,
        )
