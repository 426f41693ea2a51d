"""The memory plan: bytes per GPU of each training stage (SFT, RLP, ProRL) before any job runs.

From a model's ``config.json`` alone (the model is built on the meta device, so no
weights are read) and the stage's config, per rank: weights, gradients, AdamW state, the
frozen copies (ProRL's reference, RLP's EMA teacher and entropy proxy), the largest
forward/backward pass at the configured micro-batch (saved activations, logits and their
gradients, one layer's transient), the per-step log-prob buffers, and the rollout's
share (vLLM takes ``rollout.gpu_memory_utilization`` of the GPU; HF generation, its KV
cache). :func:`check_memory` turns a plan over the site's ``gpu_memory_gb`` into an error
that names the stage, the estimate, the limit and the knobs that would make it fit.

Where the constants come from: the saved activations of an HF Llama/Qwen3 decoder layer
are 6h + 4q + 4kv + 4f values per token (h hidden, q = heads x head_dim, kv = kv-heads x
head_dim, f intermediate) and 3h outside the layers; with activation checkpointing a
layer keeps only its h-wide input. The logit terms count the ``[tokens, V]`` fp32 tensors
alive at the peak of each pass (the forward's logits plus their gradient). All of them
were read off live-tensor measurements (:class:`slingshot.memory_probe.LiveBytes`) of the
code paths in ``slingshot.train.logprobs`` and ``slingshot.train.supervised``, fp32 on
CPU; tests/unit/core/test_memory_plan.py keeps plan and measurement within 25%. The bf16
factors (2.4 bytes per activation value: bf16 matmul inputs beside fp32 norms; a bf16
logits copy) are estimates that a GPU run has yet to confirm.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from slingshot.config import PipelineConfig, ProRLConfig, RLPConfig, SFTConfig, StagesConfig
    from slingshot.plan import Node

GIB = 1024**3
PROMPT_TOKENS = 512  # ProRL rows: the prompt (task prompts are short) plus the longest response
ACTIVATION_BYTES = {"fp32": 4.0, "bf16": 2.4}
# [tokens, V] fp32 tensors at the peak of a pass (measured), and what bf16 adds (the bf16 logits).
LOGITS_TRAIN_RL = 2.5  # token_logprobs forward + backward: logits, their log-softmax and its gradient
LOGITS_TRAIN_SFT = 2.3  # token_loss_sum: cross-entropy over the unshifted logits
LOGITS_BF16_EXTRA = 0.5
PIECE_TEMPORARIES_ENTROPY = 4  # token_entropy: [PIECE_TOKENS, V] temporaries at a time
PLANNED_KINDS = ("rlp", "sft", "prorl")


@dataclass(frozen=True)
class ModelDims:
    """What the plan needs of a decoder-only model: counted on the meta device."""

    params: int
    layer_params: int  # one decoder layer
    embedding_params: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_hf_config(cls, config: Any) -> ModelDims:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        params = sum(p.numel() for p in model.parameters())  # tied weights count once
        layer = model.get_decoder().layers[0]
        heads = config.num_attention_heads
        return cls(
            params=params,
            layer_params=sum(p.numel() for p in layer.parameters()),
            embedding_params=model.get_input_embeddings().weight.numel(),
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ModelDims:
        """From ``<path>/config.json`` only (weights need not be there yet)."""
        from transformers import AutoConfig

        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"memory plan: '{path}' has no config.json")
        json.loads(config_file.read_text())  # a clear JSON error before transformers' own
        return cls.from_hf_config(AutoConfig.from_pretrained(str(path), local_files_only=True))

    def layer_values_per_token(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 6 * self.hidden + 4 * q + 4 * kv + 4 * self.intermediate

    def saved_values_per_token(self, checkpointing: bool) -> int:
        per_layer = self.hidden if checkpointing else self.layer_values_per_token()
        return self.layers * per_layer + 3 * self.hidden


@dataclass(frozen=True)
class Parallelism:
    kind: Literal["single", "replicated", "fsdp"]
    ranks: int
    shard: int  # weights, gradients and optimizer state are divided by this


def stage_parallelism(kind: str, section: Any, on_gpu: bool = True) -> Parallelism:
    """How a stage lays its model over its ranks: the one place that knows. SFT, RLP and
    ProRL shard with FSDP2 under ``data_parallel: fsdp`` (or ``auto`` on GPUs), the RL
    stages' frozen copy too; otherwise every rank holds the whole model."""
    ranks = section.resources.nodes * section.resources.effective_tasks_per_node
    mode = getattr(section, "data_parallel", None)
    if ranks > 1 and (mode == "fsdp" or (mode == "auto" and on_gpu)):
        return Parallelism("fsdp", ranks, ranks)
    return Parallelism("replicated" if ranks > 1 else "single", ranks, 1)


@dataclass
class StagePlan:
    """Bytes per rank of one stage node; ``lines`` in plan order."""

    stage: str  # node name, e.g. "prorl-len16k"
    kind: str
    parallelism: Parallelism
    precision: str  # fp32 | bf16
    micro_batch: str  # what one forward pass covers
    lines: dict[str, float] = field(default_factory=dict)
    peak_pass: str = ""  # which pass sets the peak
    rollout_fraction: float = 0.0  # vLLM's gpu_memory_utilization (0: HF generation, in `lines`)

    @property
    def training_bytes(self) -> float:
        return sum(self.lines.values())

    def limit_bytes(self, gpu_bytes: float) -> float:
        """What training may use of a GPU of ``gpu_bytes``: vLLM takes its share first."""
        return gpu_bytes * (1.0 - self.rollout_fraction)

    def describe(self, gpu_bytes: float | None = None) -> str:
        par = self.parallelism
        head = (
            f"{self.stage}: {par.kind} over {par.ranks} rank(s), {self.precision}, "
            f"micro-batch {self.micro_batch}; per rank:"
        )
        body = [f"    {name:24s} {value / GIB:9.2f} GiB" for name, value in self.lines.items()]
        body.append(
            f"    {'training total':24s} {self.training_bytes / GIB:9.2f} GiB  (peak: {self.peak_pass})"
        )
        if self.rollout_fraction:
            share = f"{gpu_bytes * self.rollout_fraction / GIB:.2f} GiB" if gpu_bytes else "of the GPU"
            body.append(
                f"    {'vLLM share':24s} {share:>13s}  (rollout.gpu_memory_utilization={self.rollout_fraction:g})"
            )
        return "\n".join([head, *body])


# --------------------------------------------------------------------------- per stage


def _static(lines: dict[str, float], dims: ModelDims, par: Parallelism, precision: str) -> None:
    lines["weights"] = dims.params * 4.0 / par.shard  # fp32 master weights
    if par.kind == "fsdp" and precision == "bf16":
        # The bf16 all-gather of the unit in use and the next one (prefetch); the
        # embedding (tied or not) is the root unit's largest tensor.
        lines["weights"] += 2.0 * (2 * dims.layer_params + dims.embedding_params)
    lines["gradients"] = dims.params * 4.0 / par.shard
    lines["optimizer state"] = 2 * dims.params * 4.0 / par.shard  # AdamW: two fp32 moments


def _frozen(placement: str, dims: ModelDims, par: Parallelism) -> float:
    """A frozen copy (reference, EMA teacher): sharded like the policy under FSDP2."""
    return {"device": 4.0, "bf16": 2.0, "cpu": 0.0}[placement] * dims.params / par.shard


def _logit_tokens(tokens: int, chunk: int | None) -> int:
    """Tokens whose logits are alive at once: the whole pass, or one checkpointed chunk."""
    return min(tokens, chunk) if chunk else tokens


def _training_pass(
    dims: ModelDims,
    tokens: int,
    checkpointing: bool,
    precision: str,
    logits_factor: float,
    chunk: int | None = None,
) -> tuple[float, float]:
    """(activations, logits) bytes at the peak of a forward + backward over ``tokens``."""
    value = ACTIVATION_BYTES[precision]
    saved = dims.saved_values_per_token(checkpointing) * tokens * value
    # The backward's transient: one layer's full activations (recomputed, or its gradients).
    transient = dims.layer_values_per_token() * tokens * value
    extra = LOGITS_BF16_EXTRA if precision == "bf16" else 0.0
    return saved + transient, (logits_factor + extra) * _logit_tokens(tokens, chunk) * dims.vocab * 4.0


def _no_grad_pass(
    dims: ModelDims, rows: int, width: int, precision: str, entropy: bool, chunk: int | None = None
) -> tuple[float, float]:
    """(activations, logits) bytes at the peak of a no-grad log-prob pass of ``rows`` x ``width``."""
    tokens = rows * width
    # Nothing is saved without gradient: at the logits' peak only the final hidden states
    # (and their norm) are alive; a layer's transients are far smaller than [tokens, V].
    activations = 2 * dims.hidden * tokens * ACTIVATION_BYTES[precision]
    from slingshot.train.logprobs import PIECE_TOKENS

    alive = _logit_tokens(tokens, chunk)
    pieces = (PIECE_TEMPORARIES_ENTROPY if entropy else 1) * min(PIECE_TOKENS, alive)
    extra = LOGITS_BF16_EXTRA if precision == "bf16" else 0.0
    return activations, ((1.0 + extra) * alive + pieces) * dims.vocab * 4.0


def _peak(lines: dict[str, float], passes: dict[str, tuple[float, float]]) -> str:
    name = max(passes, key=lambda key: sum(passes[key]))
    lines["activations"], lines["logits"] = passes[name]
    return name


def _rollout(plan: StagePlan, rollout: Any, dims: ModelDims, rows: int, tokens: int) -> None:
    sharded = plan.parallelism.kind == "fsdp"
    if rollout.backend == "vllm":
        plan.rollout_fraction = rollout.gpu_memory_utilization
        if sharded:  # a weight push gathers every fp32 tensor whole before sending them
            plan.lines["weight push (gathered)"] = dims.params * 4.0
    else:  # HF generate on the policy: its fp32 KV cache
        plan.lines["rollout KV cache"] = rows * tokens * dims.layers * 2 * dims.kv_heads * dims.head_dim * 4.0
        if sharded:  # the policy is gathered whole for each generate call (bf16 on GPUs)
            plan.lines["generation (gathered policy)"] = dims.params * (
                2.0 if plan.precision == "bf16" else 4.0
            )


def _precision(section: Any, on_gpu: bool) -> str:
    return "bf16" if on_gpu and section.memory.bf16 else "fp32"


def plan_prorl(
    stage: str, cfg: ProRLConfig, dims: ModelDims, max_response_tokens: int, on_gpu: bool = True
) -> StagePlan:
    from slingshot.train.logprobs import micro_batch_rows

    par, precision, memory = stage_parallelism("prorl", cfg, on_gpu), _precision(cfg, on_gpu), cfg.memory
    chunk = memory.logits_chunk_tokens
    width = PROMPT_TOKENS + max_response_tokens
    ranks = max(par.ranks, 1)  # each rank holds its share of every mini-batch and of the batch
    mini_rows = cfg.mini_batch_prompts // ranks * cfg.n_samples
    rows = micro_batch_rows(mini_rows, width, memory.logprob_tokens_per_micro_batch)
    micro = f"{rows} x {width} tokens, prompts taken as {PROMPT_TOKENS}"
    plan = StagePlan(stage, "prorl", par, precision, micro)
    _static(plan.lines, dims, par, precision)
    if cfg.kl_coef > 0:
        plan.lines["reference copy"] = _frozen(memory.frozen_copy, dims, par)
    # θ_old and reference log-probs and θ_old entropies of the whole batch, kept for the step.
    buffers = 3 if cfg.kl_coef > 0 else 2
    plan.lines["step log-prob buffers"] = buffers * cfg.batch_prompts // ranks * cfg.n_samples * width * 4.0
    passes = {
        "training forward+backward": _training_pass(
            dims, rows * width, memory.activation_checkpointing, precision, LOGITS_TRAIN_RL, chunk
        ),
        "no-grad log-prob pass": _no_grad_pass(dims, rows, width, precision, True, chunk),
    }
    plan.peak_pass = _peak(plan.lines, passes)
    _rollout(plan, cfg.rollout, dims, cfg.batch_prompts // ranks * cfg.n_samples, width)
    return plan


def plan_rlp(
    stage: str, cfg: RLPConfig, dims: ModelDims, on_gpu: bool = True, proxy: ModelDims | None = None
) -> StagePlan:
    from slingshot.train.logprobs import micro_batch_rows

    par, precision, memory = stage_parallelism("rlp", cfg, on_gpu), _precision(cfg, on_gpu), cfg.memory
    chunk = memory.logits_chunk_tokens
    # context open c close after x_t..: open and close one token each (the tiny and Qwen vocabularies);
    # after's byte count bounds its tokens.
    after = len(cfg.thought_template.after.encode())
    width = cfg.context_tokens + cfg.thought_tokens + 2 + after + cfg.target_tokens
    thoughts = cfg.positions_per_step // max(par.ranks, 1) * cfg.group_size
    budget = memory.logprob_tokens_per_micro_batch
    rows = micro_batch_rows(thoughts // cfg.mini_batches, width, budget, cfg.micro_batch_size)
    plan = StagePlan(stage, "rlp", par, precision, f"{rows} x {width} tokens")
    _static(plan.lines, dims, par, precision)
    plan.lines["EMA teacher copy"] = _frozen(memory.frozen_copy, dims, par)
    if cfg.position_selection == "entropy":
        plan.lines["entropy proxy copy"] = (proxy or dims).params * 4.0
    # (θ_old of the thoughts waits in host memory: score_thoughts moves it to the CPU.)
    passes = {
        "training forward+backward": _training_pass(
            dims, rows * width, memory.activation_checkpointing, precision, LOGITS_TRAIN_RL, chunk
        ),
        "no-grad scoring pass": _no_grad_pass(dims, rows, width, precision, True, chunk),
    }
    plan.peak_pass = _peak(plan.lines, passes)
    _rollout(plan, cfg.rollout, dims, thoughts, width)
    return plan


def plan_sft(stage: str, cfg: SFTConfig, dims: ModelDims, on_gpu: bool = True) -> StagePlan:
    par, precision, memory = stage_parallelism("sft", cfg, on_gpu), _precision(cfg, on_gpu), cfg.memory
    tokens = cfg.micro_batch_size * cfg.seq_length  # packed rows are full
    plan = StagePlan(stage, "sft", par, precision, f"{cfg.micro_batch_size} x {cfg.seq_length} tokens")
    _static(plan.lines, dims, par, precision)
    activations, logits = _training_pass(
        dims, tokens, memory.activation_checkpointing, precision, LOGITS_TRAIN_SFT
    )
    if cfg.packing and cfg.attn_implementation not in ("flash_attention_2", "flash_attention_3"):
        activations += cfg.micro_batch_size * cfg.seq_length**2  # the block-diagonal mask, 1 byte a cell
    if cfg.attn_implementation == "eager":  # saved [heads, T, T] attention probabilities per layer
        layers = 1 if memory.activation_checkpointing else dims.layers
        activations += (
            layers * cfg.micro_batch_size * dims.heads * cfg.seq_length**2 * ACTIVATION_BYTES[precision]
        )
    plan.lines["activations"], plan.lines["logits"] = activations, logits
    plan.peak_pass = "training forward+backward"
    return plan


# --------------------------------------------------------------------------- the pipeline


def model_dims_for(stages: StagesConfig, kind: str) -> ModelDims | None:
    """The architecture a stage trains: the nearest ``init_model`` at or before it in the
    chain, or the pretraining model's; None when no config.json can be read yet."""
    from slingshot.config import MODEL_CHAIN

    chain = MODEL_CHAIN[: MODEL_CHAIN.index(kind) + 1]  # type: ignore[arg-type]
    for name in reversed(chain):
        section = getattr(stages, name)
        if not section.enabled and name != kind:
            continue
        if section.init_model:
            return _readable_dims(Path(section.init_model))
        if name == "pretrain" and section.enabled:
            return _pretrain_dims(section.model.model_dump_json())
    return None


def _readable_dims(path: Path) -> ModelDims | None:
    """None when the directory's config.json is missing or not a causal LM's (nothing to plan
    from; the model-directory check or the stage itself names that problem)."""
    try:
        if "model_type" not in json.loads((path / "config.json").read_text()):
            return None  # read without transformers: a DAG build of a placeholder stays cheap
        return _dir_dims(str(path.resolve()))
    except (ValueError, KeyError, OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=32)
def _dir_dims(path: str) -> ModelDims:  # a DAG build plans every node of every variant
    return ModelDims.from_model_dir(path)


@functools.lru_cache(maxsize=32)
def _pretrain_dims(model_json: str) -> ModelDims:
    from slingshot.models.config import GPTModelConfig
    from slingshot.models.export import hf_config

    return ModelDims.from_hf_config(hf_config(GPTModelConfig.model_validate_json(model_json)))


def plan_node(node: Node, stages: StagesConfig, on_gpu: bool = True) -> StagePlan | None:
    """The plan of one DAG node of a planned kind; None for other kinds or an unknown model."""
    if node.kind not in PLANNED_KINDS:
        return None
    dims = model_dims_for(stages, node.kind)
    if dims is None:
        return None
    if node.kind == "prorl":
        phase = next(p for p in stages.prorl.phases if p.name == node.phase)
        return plan_prorl(node.stage, stages.prorl, dims, phase.max_response_tokens, on_gpu)
    if node.kind == "rlp":
        proxy = _readable_dims(Path(stages.rlp.proxy_model)) if stages.rlp.proxy_model else None
        return plan_rlp(node.stage, stages.rlp, dims, on_gpu, proxy)
    return plan_sft(node.stage, stages.sft, dims, on_gpu)


def pipeline_plans(cfg: PipelineConfig) -> list[tuple[str, StagePlan]]:
    """(variant, plan) of every planned node of the DAG, a shared node once."""
    from slingshot.plan import build_plan

    plan = build_plan(cfg)
    out = []
    for node in plan.ordered():
        if node.kind in PLANNED_KINDS:
            variant = node.owner
            stage_plan = plan_node(node, cfg.variant_stages(variant))
            if stage_plan is not None:
                out.append((variant, stage_plan))
    return out


# --------------------------------------------------------------------------- the check

_CHECKPOINTING = ("memory.activation_checkpointing: true", {"activation_checkpointing": True})
_BF16 = ("memory.bf16: true", {"bf16": True})
_RL_KNOBS = [_CHECKPOINTING, ("memory.frozen_copy: cpu", {"frozen_copy": "cpu"}), _BF16]
KNOBS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "prorl": _RL_KNOBS,
    "rlp": _RL_KNOBS,
    "sft": [_CHECKPOINTING, _BF16],
}


def _with_memory(section: Any, change: dict[str, Any]) -> Any:
    return section.model_copy(update={"memory": section.memory.model_copy(update=change)})


def fixes(node: Node, stages: StagesConfig, gpu_bytes: float) -> list[str]:
    """The knobs (one at a time) that bring the node's plan under ``gpu_bytes``, else the
    one that saves the most; each with the estimate it would give."""
    base = plan_node(node, stages)
    assert base is not None
    section = getattr(stages, node.kind)
    found: list[tuple[float, str]] = []
    for label, change in KNOBS[node.kind]:
        if all(getattr(section.memory, key) == value for key, value in change.items()):
            continue  # already set
        changed = stages.model_copy(update={node.kind: _with_memory(section, change)})
        plan = plan_node(node, changed)
        assert plan is not None
        found.append((plan.training_bytes, label))
    if node.kind in ("prorl", "rlp") and section.memory.logits_chunk_tokens is None:
        changed = stages.model_copy(update={node.kind: _with_memory(section, {"logits_chunk_tokens": 2048})})
        plan = plan_node(node, changed)
        if plan is not None:
            found.append((plan.training_bytes, "memory.logits_chunk_tokens: 2048"))
    if node.kind in ("prorl", "rlp") and base.lines.get("logits", 0) > 0:
        budget = section.memory.logprob_tokens_per_micro_batch // 2
        changed = stages.model_copy(
            update={node.kind: _with_memory(section, {"logprob_tokens_per_micro_batch": max(budget, 1)})}
        )
        plan = plan_node(node, changed)
        if plan is not None and plan.training_bytes < base.training_bytes:
            found.append((plan.training_bytes, f"memory.logprob_tokens_per_micro_batch: {max(budget, 1)}"))
    if base.rollout_fraction:
        found.append((float("nan"), "rollout.gpu_memory_utilization lower"))
    limit = base.limit_bytes(gpu_bytes)
    prefix = f"stages.{node.kind}."
    fitting = [
        f"{prefix}{label} (~{value / GIB:.1f} GiB)" for value, label in sorted(found) if value <= limit
    ]
    if fitting:
        return fitting
    ranked = sorted((v, label) for v, label in found if v == v)
    hints = [f"{prefix}{label} (~{value / GIB:.1f} GiB)" for value, label in ranked[:2]]
    hints += [prefix + label for value, label in found if value != value]
    if node.kind == "sft":
        hints.append(f"{prefix}seq_length or {prefix}micro_batch_size lower")
    state = sum(base.lines[key] for key in ("weights", "gradients", "optimizer state"))
    if state > limit:  # no knob of the passes can help
        hints.append(
            f"use GPUs with more memory: the weights, gradients and AdamW state alone are {state / GIB:.1f} GiB "
            f"per rank ({base.parallelism.kind})"
        )
    return hints


def memory_problem(node: Node, stages: StagesConfig, gpu_gb: float, where: str) -> str | None:
    """The error for a node whose plan exceeds a ``gpu_gb`` GPU (None if it fits)."""
    plan = plan_node(node, stages)
    if plan is None:
        return None
    gpu_bytes = gpu_gb * GIB
    limit = plan.limit_bytes(gpu_bytes)
    if plan.training_bytes <= limit:
        return None
    share = (
        f" ({gpu_gb:g} GiB less the vLLM share rollout.gpu_memory_utilization={plan.rollout_fraction:g})"
        if plan.rollout_fraction
        else ""
    )
    parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in plan.lines.items() if value)
    return (
        f"stages.{node.kind}.memory: stage {plan.stage} needs ~{plan.training_bytes / GIB:.1f} GiB per GPU "
        f"({parts} GiB; {plan.precision}, {plan.parallelism.kind} over {plan.parallelism.ranks} rank(s), "
        f"micro-batch {plan.micro_batch}) but {where} allows {limit / GIB:.1f} GiB{share}; "
        f"set {' or '.join(fixes(node, stages, gpu_bytes))}"
    )
