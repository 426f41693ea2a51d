"""Feature extraction split into shards, each written atomically and reused when present.

A round's (prompt, completion) pairs are written once to ``<round dir>/pairs.json``;
shard i computes features for its contiguous slice into ``shard-i.pt`` (with the digest
of the pairs it was computed for, so a stale file from another round's content is never
reused). :func:`extract_features` runs the missing shards through the ``run_array`` it is
given (the stage passes the job layer's fan-out, ``StageContext.run_array``: one Slurm job
array on Slurm, sequentially in-process elsewhere) and concatenates the shard files in
order — so any number of shards gives the same features as one. In a multi-rank job the
stage makes one shard per rank and each rank computes its own on its device.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slingshot.dist import barrier, broadcast_object, rank, shard_indices
from slingshot.io import atomic_path, atomic_write_text, sha256_json
from slingshot.synth.features import FeatureSpec, gradient_features

# (task, shard indices, submitit folder) -> the tasks' results, in order
ArrayRunner = Callable[[Callable[[int], str], list[int], Path], list[str]]


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of ``n`` items, sizes differing by at most one."""
    shards = max(1, min(shards, n)) if n else 1
    return [(r.start, r.stop) for r in (shard_indices(n, i, shards) for i in range(shards))]


def shard_path(round_dir: Path, index: int) -> Path:
    return round_dir / f"shard-{index:04d}.pt"


def _read_shard(path: Path, digest: str) -> Tensor | None:
    """The shard's features if it is complete and was computed for these pairs."""
    if not path.is_file():
        return None
    record = torch.load(path, map_location="cpu", weights_only=False)
    if record.get("digest") != digest:
        return None
    return record["features"]


@functools.lru_cache(maxsize=1)
def load_proxy(model_dir: str, device: str) -> tuple[torch.nn.Module, Any]:
    """The proxy model on ``device``, loaded once per process (shards run round after round)."""
    from slingshot.models.hf import load_model_and_tokenizer

    return load_model_and_tokenizer(model_dir, device=device)


def task_device(device: str | None) -> str:
    """``device``, or where this process computes when none is given: an array task's GPU
    (the current CUDA device), else the CPU."""
    if device is not None:
        return device
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class FeatureShardTask:
    """Picklable: submitit runs it on a compute node as one array task (``task(i)``)."""

    model_dir: str
    round_dir: str
    shards: int
    spec_json: str
    device: str | None = None  # None: the GPU of the process running it (array task), else CPU

    def __call__(self, index: int) -> str:
        round_dir = Path(self.round_dir)
        payload = json.loads((round_dir / "pairs.json").read_text())
        pairs = [tuple(p) for p in payload["pairs"]]
        start, stop = shard_bounds(len(pairs), self.shards)[index]
        digest = sha256_json({"pairs": pairs[start:stop], "spec": self.spec_json})
        out = shard_path(round_dir, index)
        if _read_shard(out, digest) is not None:
            return str(out)  # done by an earlier attempt
        model, tokenizer = load_proxy(self.model_dir, task_device(self.device))
        spec = FeatureSpec(**json.loads(self.spec_json))
        feats, tokens = gradient_features(model, tokenizer, pairs[start:stop], spec)
        with atomic_path(out) as tmp:
            torch.save({"digest": digest, "features": feats, "tokens": tokens, "range": [start, stop]}, tmp)
        return str(out)


def extract_features(
    pairs: list[tuple[str, str]],
    spec: FeatureSpec,
    model_dir: Path,
    round_dir: Path,
    shards: int,
    run_array: ArrayRunner,
    device: str | None = None,
) -> tuple[Tensor, int]:
    """Features ``[len(pairs), dim]`` computed in ``shards`` shards; returns (features, tokens).

    In a multi-rank job every rank calls it with the same pairs: rank 0 writes the pairs and
    decides which shards are missing, every rank then calls ``run_array`` (which picks what
    this rank runs), and after a barrier every rank reads all shards.
    """
    if not pairs:
        return torch.zeros(0, spec.dim), 0
    round_dir.mkdir(parents=True, exist_ok=True)
    spec_json = json.dumps(asdict(spec), sort_keys=True)
    pairs_file = round_dir / "pairs.json"
    payload = {"pairs": [list(p) for p in pairs], "digest": sha256_json({"pairs": pairs, "spec": spec_json})}
    bounds = shard_bounds(len(pairs), shards)
    task = FeatureShardTask(str(model_dir), str(round_dir), len(bounds), spec_json, device)

    def digest_of(i: int) -> str:
        start, stop = bounds[i]
        return sha256_json({"pairs": [tuple(p) for p in pairs[start:stop]], "spec": spec_json})

    missing: list[int] = []
    if rank() == 0:
        if not pairs_file.is_file() or json.loads(pairs_file.read_text()).get("digest") != payload["digest"]:
            atomic_write_text(pairs_file, json.dumps(payload))
        missing = [
            i for i in range(len(bounds)) if _read_shard(shard_path(round_dir, i), digest_of(i)) is None
        ]
    # One decision for all ranks (a rank looking later could see another's fresh shard).
    missing = broadcast_object(missing)
    if missing:
        run_array(task, missing, round_dir / "submitit")
        barrier()  # every shard written before any rank reads
    feats, tokens = [], 0
    for i in range(len(bounds)):
        path = shard_path(round_dir, i)
        part = _read_shard(path, digest_of(i))
        if part is None:
            raise RuntimeError(f"feature shard {i} missing or stale after extraction: {path}")
        feats.append(part)
        tokens += int(torch.load(path, map_location="cpu", weights_only=False)["tokens"])
    return torch.cat(feats), tokens


@dataclass
class ShardedFeatures:
    """Features of one round's (problem, solution) pairs: ``features(pairs, round_index)``.

    Each round's shards live in their own ``round-NNNN`` directory under ``features_dir``.
    """

    spec: FeatureSpec
    model_dir: Path
    features_dir: Path
    shards: int
    run_array: ArrayRunner
    device: str | None = None  # where shards run in this job (the rank's device); None: the task's

    def round_dir(self, round_index: int) -> Path:
        return self.features_dir / f"round-{round_index:04d}"

    def __call__(self, pairs: list[tuple[str, str]], round_index: int) -> tuple[Tensor, int]:
        return extract_features(
            pairs,
            self.spec,
            self.model_dir,
            self.round_dir(round_index),
            self.shards,
            self.run_array,
            self.device,
        )
