"""What a stage receives: ``slingshot.stages.<name>.run(ctx) -> StageResult``.

The context carries everything a stage needs and nothing about how it was launched:
its validated config, the whole pipeline config, its upstream manifests, where to keep
work (checkpoints) and where to put outputs, the tracker, the distributed env, and
the checkpoint manager and save triggers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slingshot.checkpoint import CheckpointManager, SaveTriggers
from slingshot.config import PipelineConfig, StageConfig
from slingshot.launch.distributed import DistEnv
from slingshot.tracking import Tracker


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

    @property
    def input_model_dir(self) -> Path | None:
        """The HF model directory this stage starts from."""
        if self.init_model:
            return Path(self.init_model)
        if self.model_from:
            return Path(self.upstream[self.model_from]["outputs"]["model_dir"])
        return None

    def upstream_of_kind(self, kind: str) -> dict[str, Any]:
        found = [m for m in self.upstream.values() if m.get("kind") == kind]
        if len(found) != 1:
            raise KeyError(f"stage {self.stage} expected one upstream '{kind}' manifest, found {len(found)}")
        return found[0]


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
