"""User RL prompt sets (``stages.prorl.datasets``): read, validated and converted by the data stage.

Each set is a local JSONL/Parquet/HF-on-disk file read by :mod:`slingshot.data.corpora`
with its ``prompt_key`` and ``answer_key`` (numeric answers are read as their text). A
row with a missing, non-text or empty prompt, or a missing or empty answer, fails the
data job naming the file and line (JSONL) or row; so does a verifier that cannot be
resolved (an unknown reasoning-gym family, a user function that does not import). The
rows become entries like the task splits' (``id``, ``family`` = the set's name,
``question``, ``answer``, ``hash``) plus ``verifier`` and ``source`` (file:line), written
to ``prompt_sets/<name>.jsonl``; ProRL draws them beside the reasoning-gym tasks.

The sets of every variant are converted (the data stage is shared); two variants that
give one name to different sets are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slingshot.data.corpora import (
    CorpusFormatError,
    CorpusSpec,
    FieldMap,
    WriteStats,
    detect_format,
    read_corpus,
    write_jsonl,
)
from slingshot.data.tasks import TASK_FAMILIES, content_hash, load_entries

if TYPE_CHECKING:
    from slingshot.config import PipelineConfig, PromptSet


def prompt_sets(cfg: PipelineConfig) -> list[PromptSet]:
    """The prompt sets of every variant, by name (one name, one definition)."""
    by_name: dict[str, PromptSet] = {}
    for variant in cfg.variants:
        prorl = cfg.variant_stages(variant).prorl
        if not prorl.enabled:
            continue
        for spec in prorl.datasets:
            known = by_name.setdefault(spec.name, spec)
            if known.model_dump(exclude={"weight"}) != spec.model_dump(exclude={"weight"}):
                raise ValueError(
                    f"stages.prorl.datasets: variant {variant!r} defines prompt set {spec.name!r} "
                    "differently from another variant; give it another name"
                )
    return [by_name[name] for name in sorted(by_name)]


def _rg_fields(spec: PromptSet) -> dict[str, Any]:
    """What a ``reasoning_gym:<name>`` entry needs for :func:`slingshot.data.tasks.rg_score`."""
    name = spec.verifier.removeprefix("reasoning_gym:")
    family = TASK_FAMILIES.get(name)
    if family is not None:
        return {"dataset": family.dataset, "dataset_kwargs": dict(family.kwargs), "math": family.math}
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise ValueError(
            f"prompt set {spec.name!r}: verifier {spec.verifier!r}: {name!r} is neither a task family "
            "nor a reasoning-gym dataset"
        )
    return {"dataset": name, "dataset_kwargs": {}, "math": False}


def check_verifier(spec: PromptSet) -> dict[str, Any]:
    """Resolve the verifier now (the data job), not at the first reward; extra entry fields."""
    from slingshot.rewards.verifiers import is_user_function, load_user_function

    if spec.verifier.startswith("reasoning_gym:"):
        return _rg_fields(spec)
    if is_user_function(spec.verifier):
        load_user_function(spec.name, spec.verifier)
    return {}


def _where(path: str, fmt: str, record_id: str) -> str:
    index = record_id.rsplit(":", 1)[1]
    return f"{path}:{index}" if fmt == "jsonl" else f"{path} (row {index})"


def read_prompt_set(spec: PromptSet) -> list[dict[str, Any]]:
    """The set's rows as entries; a bad row raises :class:`CorpusFormatError` naming file:line."""
    extra = check_verifier(spec)
    fmt = detect_format(spec.path) if spec.format == "auto" else spec.format
    corpus = CorpusSpec(
        name=spec.name,
        path=spec.path,
        format=fmt,
        split=spec.split,
        fields=FieldMap(prompt=spec.prompt_key, response=spec.answer_key, scalars=True),
    )
    entries = []
    for record in read_corpus(corpus):
        where = _where(spec.path, fmt, record["id"])
        if not record["prompt"].strip():
            raise CorpusFormatError(f"{where}: empty prompt (field {spec.prompt_key!r})")
        if not record["response"].strip():
            raise CorpusFormatError(f"{where}: empty answer (field {spec.answer_key!r})")
        entries.append(
            {
                "id": record["id"],
                "family": spec.name,
                "question": record["prompt"],
                "answer": record["response"].strip(),
                "verifier": spec.verifier,
                "source": where,
                "hash": content_hash(record["prompt"]),
                "metadata": {},
                **extra,
            }
        )
    if not entries:
        raise CorpusFormatError(f"{spec.path}: prompt set {spec.name!r} has no rows")
    return entries


def convert_prompt_sets(cfg: PipelineConfig, out_dir: str | os.PathLike[str]) -> dict[str, WriteStats]:
    """Validate every prompt set, then write its entries to ``<out_dir>/prompt_sets/<name>.jsonl``
    (all are read before any is written: a bad row anywhere leaves no converted set)."""
    entries = {spec.name: read_prompt_set(spec) for spec in prompt_sets(cfg)}
    return {
        name: write_jsonl(Path(out_dir) / "prompt_sets" / f"{name}.jsonl", rows)
        for name, rows in entries.items()
    }


def load_prompt_set(data_outputs: dict[str, str], name: str) -> list[dict[str, Any]]:
    """The converted entries of set ``name`` from the data stage's outputs."""
    path = data_outputs.get(f"prompt_set_{name}")
    if path is None:
        raise ValueError(
            f"stages.prorl.datasets: prompt set {name!r} was not converted by the data stage "
            "(its outputs predate the set: rerun the data stage)"
        )
    return load_entries(path)
