"""Site files (``cluster/<site>.yaml``): the facts of one Slurm cluster.

A stage's resources say what it needs; the site file says what the cluster has and
how jobs start there (partition defaults, account, module loads, exported env).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError

from slingshot.config import Resources


class SiteError(ValueError):
    pass


class Partition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpus_per_node: NonNegativeInt = 0
    cpus_per_node: PositiveInt | None = None
    mem_gb: float | None = None
    max_nodes: PositiveInt | None = None
    max_time_min: PositiveInt | None = None
    # Memory of one GPU (GiB): `slingshot validate` refuses a stage whose memory plan
    # (slingshot.memory_plan) exceeds it. None: not checked.
    gpu_memory_gb: PositiveFloat | None = None


class DriverSection(BaseModel):
    """Where ``slingshot submit`` runs the Snakemake driver: a small CPU job that outlives its
    own time limit (USR2 ``signal_delay_s`` before it, it stops Snakemake and requeues itself)."""

    model_config = ConfigDict(extra="forbid")
    partition: str | None = None  # required by `slingshot submit`; checked against sinfo
    time_min: PositiveInt = 1440
    cpus_per_task: PositiveInt = 1
    mem_gb: float = Field(default=2.0, gt=0)
    max_requeues: NonNegativeInt = 30  # requeues of the driver (its time limit, node failures)
    signal_delay_s: PositiveInt = 120
    stop_grace_s: PositiveInt = 30  # Snakemake's time to stop before it is killed


class TrackingSection(BaseModel):
    """Where ``cluster/mlflow/serve.sh`` serves the tracking server of this site: an address
    and port the compute nodes reach (the login node's own name, not 127.0.0.1)."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"  # bind address; 0.0.0.0: every interface
    port: PositiveInt = 5000


class Site(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    default_partition: str
    partitions: dict[str, Partition]
    account: str | None = None
    qos: str | None = None
    setup: list[str] = Field(default_factory=list)  # shell lines before every job
    env: dict[str, str] = Field(default_factory=dict)  # exported into every job
    sbatch: dict[str, str] = Field(default_factory=dict)  # extra sbatch flags for every job
    driver: DriverSection | None = None  # the `slingshot submit` driver job
    # The Python jobs run with on the compute nodes (a path or a command such as
    # `apptainer exec img.sif python`), after the setup lines. None: the interpreter that
    # submits (the login node's), which a setup line activating another env does not change.
    python: str | None = None
    # Paths mounted at the same place on the login and the compute nodes: an interpreter
    # under one of them is run at DAG time (through the setup lines) to check its packages.
    shared_paths: list[str] = Field(default_factory=list)
    # True when the compute nodes are this host (the dev cluster): loopback reaches the
    # login node's tracking server and every path is shared.
    compute_nodes_local: bool = False
    tracking: TrackingSection | None = None  # the tracking server (cluster/mlflow/serve.sh)

    def job_python(self) -> str:
        """The shell command that starts Python in this site's jobs."""
        return self.python or shlex.quote(sys.executable)

    def shares(self, path: str) -> bool:
        """Whether the compute nodes see ``path`` as this machine does."""
        if self.compute_nodes_local:
            return True
        resolved = Path(path)
        return any(resolved.is_relative_to(Path(prefix)) for prefix in self.shared_paths)

    def partition_for(self, resources: Resources) -> tuple[str, Partition]:
        name = resources.partition or self.default_partition
        if name not in self.partitions:
            raise SiteError(
                f"partition '{name}' is not defined in site '{self.name}' (has: {', '.join(self.partitions)})"
            )
        return name, self.partitions[name]

    def check(self, resources: Resources) -> list[str]:
        """Problems with running ``resources`` here, each starting with the offending field."""
        try:
            name, part = self.partition_for(resources)
        except SiteError as error:
            return [f"partition: {error}"]
        problems = []
        if resources.gpus_per_node > part.gpus_per_node:
            problems.append(
                f"gpus_per_node: {resources.gpus_per_node} GPUs requested but partition '{name}' of site "
                f"'{self.name}' has {part.gpus_per_node} per node"
            )
        if part.max_nodes and resources.nodes > part.max_nodes:
            problems.append(f"nodes: {resources.nodes} requested, partition '{name}' allows {part.max_nodes}")
        if part.max_time_min and resources.time_min > part.max_time_min:
            problems.append(
                f"time_min: {resources.time_min} exceeds partition '{name}' limit {part.max_time_min}"
            )
        cpus = resources.cpus_per_task * resources.effective_tasks_per_node
        if part.cpus_per_node and cpus > part.cpus_per_node:
            problems.append(
                f"cpus_per_task: {cpus} CPUs per node requested, partition '{name}' has {part.cpus_per_node}"
            )
        return problems


def slurm_parameters(site: Site, resources: Resources) -> dict[str, Any]:
    """The submitit ``slurm_*`` parameters of a job with ``resources`` on ``site``: the partition,
    account, QOS and constraint (the stage's over the site's), the setup lines (the site's env
    exported, then the site's and the stage's own lines) and the extra sbatch flags."""
    partition, _ = site.partition_for(resources)
    params: dict[str, Any] = {
        "slurm_partition": partition,
        "slurm_setup": [*job_setup_lines(site), *resources.setup],
        "slurm_additional_parameters": {**site.sbatch, **resources.extra_sbatch},
    }
    account, qos = resources.account or site.account, resources.qos or site.qos
    for key, value in (("account", account), ("qos", qos), ("constraint", resources.constraint)):
        if value:
            params[f"slurm_{key}"] = value
    return params


def job_setup_lines(site: Site) -> list[str]:
    """The batch-script lines every job of ``site`` runs before Python: the site's env
    exported (values quoted: they reach a shell), then the site's setup lines."""
    env = {**site.env, "PYTHONUNBUFFERED": "1"}
    return [*(f"export {key}={shlex.quote(value)}" for key, value in env.items()), *site.setup]


def setup_script(site: Site) -> str:
    """The shell lines a job of ``site`` runs before Python (its env exported, its setup lines),
    as one script: what the DAG check runs the site's Python through."""
    exports = [f"export {key}={shlex.quote(value)}" for key, value in site.env.items()]
    return "\n".join([*exports, *site.setup])


def site_dir() -> Path:
    """Where site files live: $SLINGSHOT_SITE_DIR, else ./cluster (the project checkout)."""
    return Path(os.environ.get("SLINGSHOT_SITE_DIR", "cluster"))


def site_file(name_or_path: str | None) -> Path:
    """The file of a site given by name (``cluster/<name>.yaml``) or path; None: $SLINGSHOT_SITE."""
    name_or_path = name_or_path or os.environ.get("SLINGSHOT_SITE")
    if not name_or_path:
        raise SiteError(
            "no site given: set launcher.site (or $SLINGSHOT_SITE) to a file in cluster/, e.g. 'dev', to run on Slurm"
        )
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = site_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SiteError(f"site file '{path}' not found")
    return path


def load_site(name_or_path: str | None) -> Site:
    """A site by name (``cluster/<name>.yaml``) or path; None: $SLINGSHOT_SITE."""
    path = site_file(name_or_path)
    try:
        return Site.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as error:
        raise SiteError(f"{path}: {error}") from None
