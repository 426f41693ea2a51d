"""What a stage receives: ``slingshot.stages.<name>.run(ctx) -> StageResult``.

The context carries everything a stage needs and nothing about how it was launched:
its validated config, the whole pipeline config, its upstream manifests, where to keep
work (checkpoints) and where to put outputs, the tracker, the distributed env, the
checkpoint manager and save triggers, and ``run_array`` to fan independent tasks out
(the job layer makes it one Slurm job array on Slurm), so stages never import ``launch``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from slingshot.checkpoint import CheckpointManager, SaveTriggers
from slingshot.config import PipelineConfig, StageConfig
from slingshot.dist import DistEnv
from slingshot.tracking import Tracker

if TYPE_CHECKING:
    from slingshot.train.logging import Progress

T = TypeVar("T")


class ArrayRunner(Protocol):
    """``[fn(i) for i in indices]``, possibly as a job array; ``fn`` must be picklable and each
    task idempotent (a resubmitted array redoes only what is missing)."""

    def __call__(
        self, fn: Callable[[int], T], indices: Sequence[int], *, folder: Path, name: str
    ) -> list[T]: ...


def run_in_process(fn: Callable[[int], T], indices: Sequence[int], *, folder: Path, name: str) -> list[T]:
    """The fan-out outside a launched job (tests, direct calls): each task in turn, here."""
    return [fn(i) for i in indices]


@dataclass
class StageResult:
    """What a stage reports back; the job wrapper turns it into the manifest."""

    outputs: dict[str, str] = field(default_factory=dict)  # name -> path (model_dir, dataset, table ...)
    metrics: dict[str, float] = field(default_factory=dict)  # final key metrics
    tokens: int = 0  # tokens processed by this stage
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    stage: str  # node name, e.g. "pretrain-phase1"
    kind: str  # pretrain | rlp | synth | sft | prorl | evaluate | data | report
    variant: str  # the owning variant
    phase: str | None
    config: StageConfig | None  # the stage's section (None for data/report: see pipeline)
    pipeline: PipelineConfig
    upstream: dict[str, dict[str, Any]]  # node key -> manifest
    model_from: str | None  # node key whose output model this stage starts from
    init_model: str | None  # external model directory (start of chain)
    work_dir: Path
    output_dir: Path
    tracker: Tracker
    dist: DistEnv
    checkpoints: CheckpointManager
    triggers: SaveTriggers
    # Fans out independent tasks (a Slurm job array on Slurm); the job layer sets it.
    run_array: ArrayRunner = run_in_process
    # Where the training loop stands (step i/N, ETA); resumable_steps sets it.
    progress: Progress | None = None

    @property
    def input_model_dir(self) -> Path | None:
        """The HF model directory this stage starts from."""
        if self.init_model:
            return Path(self.init_model)
        if self.model_from:
            return Path(self.upstream[self.model_from]["outputs"]["model_dir"])
        return None

    def require_input_model(self) -> Path:
        """The input model directory; a clear error when the stage has none."""
        model_dir = self.input_model_dir
        if model_dir is None:
            has_init = self.config is not None and "init_model" in type(self.config).model_fields
            source = (
                f"an upstream model stage or stages.{self.kind}.init_model"
                if has_init
                else "the model stage it evaluates"
            )
            raise ValueError(f"stage {self.stage} needs an input model: {source}")
        return model_dir

    @property
    def model_name(self) -> str:
        """The stage's model name in MLflow: ``<variant>-<stage>``, the same rule for every stage."""
        return f"{self.variant}-{self.stage}"

    def log_file_input(
        self, name: str, path: str | Path, context: str = "training", digest: str | None = None
    ) -> None:
        """Record a dataset file this stage reads (its sha256 unless ``digest`` is given)."""
        from slingshot.io import sha256_file

        self.tracker.log_input(
            name, path, digest if digest is not None else sha256_file(path), context=context
        )

    def publish_model(self, model_dir: Path, params: dict[str, Any] | None = None) -> None:
        """Register the stage's finished HF model directory in MLflow (rank 0)."""
        if self.dist.is_main:
            self.tracker.log_model_dir(self.model_name, model_dir, params=params)

    def upstream_of_kind(self, kind: str) -> dict[str, Any]:
        found = [m for m in self.upstream.values() if m.get("kind") == kind]
        if len(found) != 1:
            raise KeyError(f"stage {self.stage} expected one upstream '{kind}' manifest, found {len(found)}")
        return found[0]


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
