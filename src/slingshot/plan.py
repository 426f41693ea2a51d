"""The recipe as a graph of stage nodes: what runs, from what, and where its files go.

The Snakefile, the launcher and `slingshot status` all read this one plan, so they
agree on paths and on which stages variants share. A node is identified by a digest
of everything that determines its result (its config minus resources/checkpointing,
and its upstream digests). Variants whose nodes have the same digest share one node;
it lives under the first variant (in config order) that uses it.

Chain per variant: pretrain phases -> rlp -> synth (dataset) -> sft -> prorl phases,
skipping disabled stages; a stage with ``init_model`` starts the chain. Every enabled
model stage listed in ``evaluate.models`` gets an evaluation node; one report node
gathers them.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slingshot.config import MODEL_CHAIN, PipelineConfig, StageConfig, StagesConfig
from slingshot.io import sha256_json

# Fields that change how a stage runs but not what it computes.
_NOT_IN_DIGEST = {"resources", "checkpoint", "log_every", "enabled"}


@dataclass
class Node:
    stage: str  # directory name, e.g. "pretrain-phase1", "rlp", "evaluate-sft"
    kind: str  # data | pretrain | rlp | synth | sft | prorl | evaluate | report
    owner: str  # the variant whose directories hold it ("" for data and report)
    digest: str
    phase: str | None = None
    model_from: str | None = None  # key of the node whose HF model this one starts from
    init_model: str | None = None  # external model directory, when the chain starts here
    upstream: list[str] = field(default_factory=list)  # keys of all nodes whose manifests it reads
    variants: list[str] = field(default_factory=list)  # every variant that uses it

    @property
    def key(self) -> str:
        return f"{self.owner}/{self.stage}" if self.owner else self.stage

    def output_dir(self, cfg: PipelineConfig) -> Path:
        return cfg.results_dir / self.key

    def work_dir(self, cfg: PipelineConfig) -> Path:
        return cfg.work_dir / self.key

    def manifest_path(self, cfg: PipelineConfig) -> Path:
        return self.output_dir(cfg) / "manifest.json"

    def log_path(self, cfg: PipelineConfig) -> Path:
        return cfg.results_dir / "logs" / f"{self.key.replace('/', '.')}.log"


def stage_config(cfg: PipelineConfig, node: Node) -> StageConfig | None:
    """The validated config of a node's stage, in the variant that owns it."""
    if node.kind in ("data", "report"):
        return None
    stages = cfg.variant_stages(node.owner)
    return getattr(stages, node.kind)


def _identity(section: StageConfig, **replace: Any) -> dict[str, Any]:
    dumped = section.model_dump(mode="json", exclude=_NOT_IN_DIGEST)
    dumped.update(replace)
    return dumped


@dataclass
class Plan:
    cfg: PipelineConfig
    nodes: dict[str, Node] = field(default_factory=dict)
    # (variant, stage name) -> node key; a shared node is reachable from every variant.
    by_variant: dict[tuple[str, str], str] = field(default_factory=dict)

    def _add(self, variant: str, node: Node) -> Node:
        for existing in self.nodes.values():
            if existing.digest == node.digest and existing.stage == node.stage:
                if variant not in existing.variants:
                    existing.variants.append(variant)
                self.by_variant[(variant, node.stage)] = existing.key
                return existing
        node.variants.append(variant)
        self.nodes[node.key] = node
        self.by_variant[(variant, node.stage)] = node.key
        return node

    def node(self, variant: str, stage: str) -> Node:
        """The node a variant runs for ``stage`` (which may be owned by another variant)."""
        if stage in self.nodes and self.nodes[stage].owner == "":
            return self.nodes[stage]
        try:
            return self.nodes[self.by_variant[(variant, stage)]]
        except KeyError:
            known = sorted({s for (v, s) in self.by_variant if v == variant})
            raise KeyError(
                f"variant '{variant}' has no stage '{stage}' (it has: {', '.join(known)})"
            ) from None

    def upstream_manifests(self, node: Node) -> dict[str, Path]:
        return {key: self.nodes[key].manifest_path(self.cfg) for key in node.upstream}

    def targets(self) -> list[Path]:
        return [n.manifest_path(self.cfg) for n in self.nodes.values()]

    def ordered(self) -> list[Node]:
        """Nodes in dependency order."""
        seen: dict[str, Node] = {}

        def visit(key: str) -> None:
            if key in seen:
                return
            for up in self.nodes[key].upstream:
                visit(up)
            seen[key] = self.nodes[key]

        for key in self.nodes:
            visit(key)
        return list(seen.values())


def build_plan(cfg: PipelineConfig) -> Plan:
    plan = Plan(cfg)
    data = Node(stage="data", kind="data", owner="", digest=sha256_json(cfg.data.model_dump(mode="json")))
    plan.nodes[data.key] = data
    data.variants.extend(cfg.variants)
    evaluations: list[str] = []
    for variant in cfg.variants:
        evaluations += _add_variant(plan, variant, cfg.variant_stages(variant), data)
    report_digest = sha256_json(sorted(plan.nodes[k].digest for k in evaluations))
    report = Node(
        stage="report", kind="report", owner="", digest=report_digest, upstream=sorted(set(evaluations))
    )
    report.variants.extend(cfg.variants)
    plan.nodes[report.key] = report
    return plan


def _add_variant(plan: Plan, variant: str, stages: StagesConfig, data: Node) -> list[str]:
    model: Node | None = None  # the node whose output model the next stage starts from
    final_of_kind: dict[str, Node] = {}

    def chain_node(
        stage: str, kind: str, section: StageConfig, identity: dict[str, Any], **extra: Any
    ) -> Node:
        nonlocal model
        init_model = getattr(section, "init_model", None)
        upstream_model = None if init_model else model
        upstream = [data.key] + ([upstream_model.key] if upstream_model else []) + extra.pop("upstream", [])
        digest = sha256_json(
            {
                "kind": kind,
                "config": identity,
                "data": data.digest,
                "model": upstream_model.digest if upstream_model else init_model,
                "upstream": [plan.nodes[k].digest for k in upstream],
            }
        )
        node = Node(
            stage=stage,
            kind=kind,
            owner=variant,
            digest=digest,
            model_from=upstream_model.key if upstream_model else None,
            init_model=init_model,
            upstream=upstream,
            **extra,
        )
        return plan._add(variant, node)

    for kind in MODEL_CHAIN:
        section = getattr(stages, kind)
        if not section.enabled:
            continue
        if kind == "sft" and stages.synth.enabled:
            synth = _synth_node(plan, variant, stages, data, model)
            sft_upstream = [synth.key] if stages.sft.use_synth else []
        else:
            sft_upstream = []
        if kind in ("pretrain", "prorl"):
            phases = section.phases
            for i, phase in enumerate(phases):
                identity = _identity(section, phases=[p.model_dump(mode="json") for p in phases[: i + 1]])
                node = chain_node(f"{kind}-{phase.name}", kind, section, identity, phase=phase.name)
                model = node
        else:
            upstream = sft_upstream if kind == "sft" else []
            model = chain_node(kind, kind, section, _identity(section), upstream=upstream)
        final_of_kind[kind] = model
    if stages.synth.enabled and not stages.sft.enabled:
        _synth_node(plan, variant, stages, data, model)

    evaluations = []
    ev = stages.evaluate
    if ev.enabled:
        for kind in ev.models:
            if kind not in final_of_kind:
                continue
            target = final_of_kind[kind]
            digest = sha256_json({"kind": "evaluate", "config": _identity(ev), "model": target.digest})
            node = Node(
                stage=f"evaluate-{kind}",
                kind="evaluate",
                owner=variant,
                digest=digest,
                model_from=target.key,
                upstream=[data.key, target.key],
            )
            evaluations.append(plan._add(variant, node).key)
    return evaluations


def _synth_node(plan: Plan, variant: str, stages: StagesConfig, data: Node, model: Node | None) -> Node:
    synth = stages.synth
    proxy = None if synth.proxy_model else model
    upstream = [data.key] + ([proxy.key] if proxy else [])
    digest = sha256_json(
        {
            "kind": "synth",
            "config": _identity(synth),
            "data": data.digest,
            "proxy": proxy.digest if proxy else synth.proxy_model,
        }
    )
    node = Node(
        stage="synth",
        kind="synth",
        owner=variant,
        digest=digest,
        model_from=proxy.key if proxy else None,
        upstream=upstream,
    )
    return plan._add(variant, node)


# --------------------------------------------------------------------------- DAG checks
def _model_dir_problem(path: str) -> str | None:
    from slingshot.models.hf import TOKENIZER_FILES, WEIGHT_FILES

    p = Path(path)
    if not p.is_dir():
        return f"'{path}' is not a directory"
    if not (p / "config.json").is_file():
        return f"'{path}' has no config.json (not a Hugging Face model directory)"
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        return f"'{path}' has no weights (expected one of {', '.join(WEIGHT_FILES)})"
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        return f"'{path}' has no tokenizer ({' or '.join(TOKENIZER_FILES)})"
    return _vocab_mismatch(p)


def _vocab_mismatch(model_dir: Path) -> str | None:
    """A tokenizer with more tokens than the model has embedding rows does not belong to it
    (read from config.json and tokenizer.json without loading either; None if unreadable)."""
    import json

    try:
        rows = json.loads((model_dir / "config.json").read_text()).get("vocab_size")
        tok = json.loads((model_dir / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
        ids += [t["id"] for t in tok.get("added_tokens", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(rows, int) or not ids or max(ids) + 1 <= rows:
        return None
    return (
        f"the tokenizer in '{model_dir}' has {max(ids) + 1} tokens but config.json's vocab_size is {rows}: "
        "they do not belong together"
    )


def _data_file_problem(path: str, fmt: str) -> str | None:
    """A data file that is missing or holds no records (cheap: the first record or the
    Parquet footer, never the whole file; a malformed record fails the stage that reads
    it, naming the file and line)."""
    p = Path(path)
    if not p.exists():
        return f"'{path}' does not exist"
    if p.is_dir():
        return None if any(p.iterdir()) else f"'{path}' is an empty directory"
    if fmt in ("jsonl", "auto") and p.suffix in (".jsonl", ".json", ".ndjson", ""):
        with open(p, "rb") as handle:
            if not any(line.strip() for line in handle):
                return f"'{path}' is empty (no records)"
    elif fmt in ("parquet", "auto") and p.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(p).metadata.num_rows
        except Exception as error:  # noqa: BLE001 - any unreadable footer is the same problem
            return f"'{path}' is not a readable Parquet file ({error})"
        if rows == 0:
            return f"'{path}' is empty (no records)"
    elif p.stat().st_size == 0:
        return f"'{path}' is empty (no records)"
    return None


def check_plan(cfg: PipelineConfig) -> list[str]:
    """Problems that only show once the recipe is laid out as a graph, named by key path."""
    problems: list[str] = []
    for variant in cfg.variants:
        where = f"variant '{variant}': " if len(cfg.variants) > 1 else ""
        stages = cfg.variant_stages(variant)
        enabled = [k for k in MODEL_CHAIN if getattr(stages, k).enabled]
        if stages.pretrain.enabled and stages.pretrain.init_model:
            problems.append(f"{where}stages.pretrain.init_model: pretraining starts from scratch; remove it")
        for i, kind in enumerate(enabled):
            section = getattr(stages, kind)
            if section.init_model:
                problem = _model_dir_problem(section.init_model)
                if problem:
                    problems.append(f"{where}stages.{kind}.init_model: {problem}")
                if i > 0:
                    problems.append(
                        f"{where}stages.{kind}.init_model is set, so stages.{enabled[i - 1]} would feed nothing: "
                        f"disable it (stages.{enabled[i - 1]}.enabled: false) or remove init_model"
                    )
            elif i == 0 and kind != "pretrain":
                problems.append(
                    f"{where}stages.{kind}.init_model: required, since no earlier stage is enabled"
                )
        if stages.synth.enabled:
            if stages.synth.proxy_model:
                problem = _model_dir_problem(stages.synth.proxy_model)
                if problem:
                    problems.append(f"{where}stages.synth.proxy_model: {problem}")
            elif not any(k in enabled for k in ("pretrain", "rlp")):
                problems.append(
                    f"{where}stages.synth.proxy_model: required, since no model precedes synthesis"
                )
            gen = stages.synth.generator
            if gen.model:
                problem = _model_dir_problem(gen.model)
                if problem:
                    problems.append(f"{where}stages.synth.generator.model: {problem}")
        if (
            stages.sft.enabled
            and not (stages.sft.use_synth and stages.synth.enabled)
            and not stages.sft.extra_datasets
        ):
            problems.append(
                f"{where}stages.sft: no training data (enable synth with use_synth, or add extra_datasets)"
            )
        for i, dataset in enumerate(stages.sft.extra_datasets):
            problem = _data_file_problem(dataset.path, dataset.format)
            if problem:
                problems.append(f"{where}stages.sft.extra_datasets.{i}.path: {problem}")
    for i, corpus in enumerate(cfg.data.extra_corpora):
        problem = _data_file_problem(corpus.path, corpus.format)
        if problem:
            problems.append(f"data.extra_corpora.{i}.path: {problem}")
    problems += _site_problems(cfg)
    return problems


def _local_gpu_problems(cfg: PipelineConfig) -> list[str]:
    """GPU requests on the local backends must fit this machine (counted without importing torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip()])
    else:
        gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    problems = []
    for variant in cfg.variants:
        stages = cfg.variant_stages(variant)
        for name in StagesConfig.model_fields:
            section = getattr(stages, name)
            wanted = section.resources.gpus_per_node
            if section.enabled and wanted > gpus:
                problems.append(
                    f"stages.{name}.resources.gpus_per_node: {wanted} GPUs requested but this machine has {gpus} "
                    f"(launcher.backend={cfg.launcher.backend}); use a Slurm site with GPUs or request 0"
                )
    return sorted(set(problems))


def _site_problems(cfg: PipelineConfig) -> list[str]:
    from slingshot.launch.site import SiteError, load_site  # launch/ owns the site file format

    if cfg.launcher.backend != "slurm":
        return _local_gpu_problems(cfg)
    try:
        site = load_site(cfg.launcher.site)
    except SiteError as error:
        return [f"launcher.site: {error}"]
    problems = []
    for variant in cfg.variants:
        stages = cfg.variant_stages(variant)
        for name in StagesConfig.model_fields:
            section = getattr(stages, name)
            if section.enabled:
                problems += [f"stages.{name}.resources.{p}" for p in site.check(section.resources)]
    return sorted(set(problems))
