"""The recipe as a graph of stage nodes: what runs, from what, and where its files go.

The Snakefile, the launcher and `slingshot status` all read this one plan, so they
agree on paths and on which stages variants share. A node is identified by a digest
of everything in the config that determines its result: its kind and the entrypoint
that runs it, its stage config minus resources/checkpointing/logging (a phase node: the
phases up to its own), the pipeline seed every stage derives its randomness from, and
its upstream digests (the data node: the data config, which has its own seed). The
synthesis stage also seeds on its variant's name, so a synth node's digest includes
the variant that owns it; the report's includes the variants and evaluation nodes it
lists. Variants whose nodes have the same digest share one node; it lives under the
first variant (in config order) that uses it, and a later variant shares a synth node
when its digest, taken with that owner's name, is the owner's.

Chain per variant: pretrain phases -> rlp -> synth (dataset) -> sft -> prorl phases,
skipping disabled stages; a stage with ``init_model`` starts the chain. With
``sft.synth_from`` a variant's SFT reads an earlier variant's synth node instead of its own. Every enabled
model stage listed in ``evaluate.models`` gets an evaluation node; one report node
gathers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slingshot.config import (
    MODEL_CHAIN,
    PHASED_STAGES,
    PipelineConfig,
    StageConfig,
    StagesConfig,
    borrowed_synth,
    runs_synth,
)
from slingshot.data.prompt_sets import prompt_sets
from slingshot.io import sha256_json

# Fields that change how a stage runs but not what it computes (sft.synth_from picks an
# upstream node, whose digest is in the digest already).
_NOT_IN_DIGEST = {"resources", "checkpoint", "log_every", "enabled", "synth_from"}


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


def _digest(cfg: PipelineConfig, kind: str, **parts: Any) -> str:
    """A node's digest: its kind, the entrypoint that runs it (None: slingshot's own) and ``parts``."""
    return sha256_json({"kind": kind, "entrypoint": cfg.entrypoints.get(kind), **parts})


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
    # The data stage also converts the ProRL prompt sets: they are part of its identity
    # (only when there are any, so a recipe without them keeps its digest).
    sets = [spec.model_dump(mode="json", exclude={"weight"}) for spec in prompt_sets(cfg)]
    data_digest = _digest(
        cfg, "data", config=cfg.data.model_dump(mode="json"), **({"prompt_sets": sets} if sets else {})
    )
    data = Node(stage="data", kind="data", owner="", digest=data_digest)
    plan.nodes[data.key] = data
    data.variants.extend(cfg.variants)
    evaluations: list[str] = []
    for variant in cfg.variants:
        evaluations += _add_variant(plan, variant, cfg.variant_stages(variant), data)
    # The table names each variant (in config order) and the node each row evaluates.
    report_digest = _digest(
        cfg,
        "report",
        variants=list(cfg.variants),
        evaluations={key: plan.nodes[key].digest for key in evaluations},
    )
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
        # Only the first node of a phased stage starts from init_model; later phases
        # continue from the previous phase (extra["starts_chain"] = False).
        init_model = getattr(section, "init_model", None) if extra.pop("starts_chain", True) else None
        upstream_model = None if init_model else model
        upstream = [data.key] + ([upstream_model.key] if upstream_model else []) + extra.pop("upstream", [])
        digest = _digest(
            plan.cfg,
            kind,
            config=identity,
            seed=plan.cfg.pipeline.seed,
            data=data.digest,
            model=upstream_model.digest if upstream_model else init_model,
            upstream=[plan.nodes[k].digest for k in upstream],
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
        source = borrowed_synth(stages, variant)
        if kind == "sft" and source is not None:
            # Another arm's synthesized set (listed earlier, so its node exists): no synthesis of its own.
            synth = plan.node(source, "synth")
            if variant not in synth.variants:
                synth.variants.append(variant)
            sft_upstream = [synth.key]
        elif kind == "sft" and stages.synth.enabled:
            synth = _synth_node(plan, variant, stages, data, model)
            sft_upstream = [synth.key] if stages.sft.use_synth else []
        else:
            sft_upstream = []
        if kind in PHASED_STAGES:
            phases = section.phases
            for i, phase in enumerate(phases):
                identity = _identity(section, phases=[p.model_dump(mode="json") for p in phases[: i + 1]])
                node = chain_node(
                    f"{kind}-{phase.name}", kind, section, identity, phase=phase.name, starts_chain=i == 0
                )
                model = node
        else:
            upstream = sft_upstream if kind == "sft" else []
            model = chain_node(kind, kind, section, _identity(section), upstream=upstream)
        final_of_kind[kind] = model
    if runs_synth(stages, variant) and not stages.sft.enabled:
        _synth_node(plan, variant, stages, data, model)

    evaluations = []
    ev = stages.evaluate
    if ev.enabled:
        for kind in ev.models:
            if kind not in final_of_kind:
                continue
            target = final_of_kind[kind]
            digest = _digest(
                plan.cfg, "evaluate", config=_identity(ev), seed=plan.cfg.pipeline.seed, model=target.digest
            )
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
    identity = {
        "config": _identity(synth),
        "seed": plan.cfg.pipeline.seed,
        "data": data.digest,
        "proxy": proxy.digest if proxy else synth.proxy_model,
    }
    # Synthesis seeds on its variant's name (stages/synth.py), so the owner is part of the
    # digest: a variant whose synthesis is an earlier one's but for the name shares that node.
    owner = next(
        (
            n.owner
            for n in plan.nodes.values()
            if n.stage == "synth" and n.digest == _digest(plan.cfg, "synth", variant=n.owner, **identity)
        ),
        variant,
    )
    digest = _digest(plan.cfg, "synth", variant=owner, **identity)
    node = Node(
        stage="synth",
        kind="synth",
        owner=variant,
        digest=digest,
        model_from=proxy.key if proxy else None,
        upstream=upstream,
    )
    return plan._add(variant, node)
