"""Front-loaded reasoning pretraining (SPEC 1) on Megatron-Core: one job per phase.

Each phase node (``pretrain-<phase>``) trains the Megatron-Core GPT on a BlendedDataset
of the data stage's indexed corpora with the phase's blend, for its share of the
stage's tokens (``token_fraction * total_tokens``). The learning-rate schedule (warmup,
then cosine to ``min_lr_ratio`` of the peak) spans ALL phases, so phase ``i`` continues
at the global step where phase ``i-1`` ended: it starts from the previous phase's FINAL
Megatron checkpoint (model, optimizer, consumed-token counts), never from the HF export.

With ``init_model`` (an HF Llama/Qwen2/Qwen3 directory) the stage continues pretraining
it: every phase builds the checkpoint's architecture, the first phase imports its weights
(``slingshot.models.hf_import``), and the data stage must have tokenized the corpora with
its tokenizer (``data.tokenizer.path``; checked at validate time and here).

Outputs of a phase: ``mcore_checkpoint`` (sharded dist_checkpointing directory the next
phase starts from) and ``model_dir`` (the exact HF Llama/Qwen2/Qwen3 export for RLP,
evaluation and the rest of the chain), each written whole or not at all.

Data (``slingshot.models.megatron_data``): each corpus is one GPTDataset stream for the
whole stage; a phase's BlendedDataset picks which corpus each sample comes from, and
phase 2 continues every stream at the samples phase 1 consumed of it.

Exact resume (``slingshot.models.megatron_checkpoint.MegatronState``): a checkpoint holds
the sharded model and optimizer (Adam moments and step), the global step (which is the lr
schedule's state), the phase's data position (the datasets are pure functions of the
config, so the step and the per-corpus counts are enough), samples consumed per corpus,
and every rank's RNG streams.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from slingshot.config import PretrainConfig
from slingshot.context import StageContext, StageResult
from slingshot.loop import resumable_steps
from slingshot.train.logging import StepLogger
from slingshot.train.optim import lr_factor

if TYPE_CHECKING:
    from slingshot.models.megatron_checkpoint import MegatronState
    from slingshot.models.megatron_data import PhasePlan


def run(ctx: StageContext) -> StageResult:
    from slingshot.models.megatron_gpt import model_parallel

    cfg = ctx.config
    assert isinstance(cfg, PretrainConfig)
    if cfg.parallel.pipeline_parallel_size != 1:
        # The training step is a plain forward/backward (no pipeline schedule).
        raise ValueError("parallel.pipeline_parallel_size > 1 is not supported by the pretrain stage yet")
    with model_parallel(cfg.parallel, seed=ctx.pipeline.pipeline.seed):
        return _train_phase(ctx, cfg)


def _consumed_tokens(samples: dict[str, int], seq: int) -> dict[str, float]:
    return {f"consumed_tokens_{name}": float(n * seq) for name, n in samples.items()}


def _start_from_previous_phase(
    ctx: StageContext, state: MegatronState, plan: PhasePlan, all_corpora: list[str]
) -> None:
    """Load the previous phase's final Megatron checkpoint: weights, optimizer, step, consumption."""
    if not ctx.model_from or ctx.model_from not in ctx.upstream:
        raise ValueError(f"{ctx.stage}: phase {plan.name} needs the previous pretrain phase upstream")
    checkpoint = ctx.upstream[ctx.model_from].get("outputs", {}).get("mcore_checkpoint")
    if not checkpoint:
        raise ValueError(f"{ctx.model_from} has no mcore_checkpoint output to continue pretraining from")
    fresh_counters = state.counters
    state.load(Path(checkpoint))
    loaded = state.counters
    if loaded["global_step"] != plan.offset:
        raise ValueError(
            f"{ctx.model_from} ended at global step {loaded['global_step']} but this phase expects "
            f"{plan.offset}: the phases' token budgets changed"
        )
    samples = dict.fromkeys(all_corpora, 0) | dict(loaded["samples"])
    state.counters = {
        **fresh_counters,
        "global_step": loaded["global_step"],
        "samples": samples,
        "phase_start_samples": dict(samples),
    }
    if ctx.dist.is_main:
        ctx.tracker.set_tags({"slingshot.pretrain_from_checkpoint": str(checkpoint)})
        print(f"[{ctx.stage}] continuing from {checkpoint} at global step {plan.offset}", flush=True)


def _train_phase(ctx: StageContext, cfg: PretrainConfig) -> StageResult:
    from megatron.core import parallel_state

    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.export import export_hf_dir
    from slingshot.models.flops import mfu
    from slingshot.models.hf_import import continued_pretraining_config, load_hf_into_gpt, read_hf_state_dict
    from slingshot.models.megatron_checkpoint import MegatronState, save_final_checkpoint
    from slingshot.models.megatron_data import PhaseData, phase_plan
    from slingshot.models.megatron_gpt import build_gpt
    from slingshot.models.megatron_train import data_parallel_mean, train_step, wrap_for_training

    plan = phase_plan(cfg, ctx.phase)
    phase = cfg.phases[plan.index]
    data = ctx.upstream_of_kind("data")
    tokenizer = load_tokenizer(data["outputs"]["tokenizer_dir"])
    # The data tokenizer decides the vocabulary (Megatron pads it for TP); continued
    # pretraining takes the HF checkpoint's architecture, vocabulary and tokenizer (checked).
    if cfg.init_model:
        model_cfg = continued_pretraining_config(cfg.init_model, cfg.model, tokenizer)
    else:
        model_cfg = cfg.model.model_copy(update={"vocab_size": len(tokenizer)})
    seq = model_cfg.seq_length
    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    if cfg.global_batch_size % (cfg.micro_batch_size * dp_size):
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size "
            f"{cfg.micro_batch_size} x data-parallel size {dp_size}"
        )

    # Model, optimizer and the checkpointed counters (a phase > 1 starts from the previous one's).
    bf16 = cfg.precision == "bf16"
    torch.manual_seed(ctx.pipeline.pipeline.seed)  # CPU-initialised full weights: identical on every rank
    model = build_gpt(model_cfg, cfg.parallel, bf16=bf16)
    if ctx.init_model and ctx.checkpoints.latest() is None:  # the first phase of continued pretraining
        load_hf_into_gpt(model, read_hf_state_dict(ctx.init_model), model_cfg)
    ddp, optimizer = wrap_for_training(model, cfg.optimizer, cfg.parallel, bf16=bf16)
    all_corpora = list(dict.fromkeys(name for p in cfg.phases for name in p.blend))
    blend = dict(phase.blend)
    state = MegatronState(
        model,
        optimizer,
        {
            "phase": phase.name,
            "blend": blend,
            "global_step": plan.offset,
            "phase_step": 0,  # = data position: next sample is phase_step * global_batch_size
            "samples": dict.fromkeys(all_corpora, 0),
            # Consumed before this phase: where each corpus stream continues from.
            "phase_start_samples": dict.fromkeys(all_corpora, 0),
            "first_loss": None,
            "last_loss": None,
        },
    )
    if ctx.checkpoints.latest() is None and plan.index > 0:
        _start_from_previous_phase(ctx, state, plan, all_corpora)
    state.expect = {"phase": phase.name, "blend": blend}

    # The phase's data: its BlendedDataset order over stage-long corpus streams (the same
    # streams in every phase, continued from what earlier phases consumed).
    prefixes = {n: data["outputs"][f"indexed_{n}"] for n in all_corpora if f"indexed_{n}" in data["outputs"]}
    phase_data = PhaseData.from_config(cfg, plan, tokenizer, prefixes, seed=ctx.pipeline.pipeline.seed)
    if ctx.dist.is_main:
        indexed = (data.get("data") or {}).get("indexed", {})
        for name in blend:  # the data stage recorded each corpus's digest
            digest = indexed.get(name, {}).get("bin_sha256") or None
            ctx.log_file_input(f"corpus-{name}", prefixes[name] + ".bin", digest=digest)
        ctx.tracker.log_params(
            {
                "phase_steps": plan.steps,
                "phase_step_offset": plan.offset,
                "stage_total_steps": plan.total_steps,
                "vocab_size_actual": len(tokenizer),
                "data_parallel_size": dp_size,
            }
        )
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if ctx.dist.is_main and mfu(model_cfg, 1.0, device_name, bf16) is None:
        print(f"[{ctx.stage}] mfu=n/a (no peak FLOPs known for device '{device_name}')", flush=True)

    logger = StepLogger(ctx, cfg.log_every)
    window_tokens, window_time = 0, 0.0
    for step in resumable_steps(ctx, plan.steps, state, all_ranks_write=True):
        started = time.perf_counter()
        counters = state.counters
        step_index = step - 1  # 0-based position in the phase's sample order
        assert counters["phase_step"] == step_index, "data position out of step with the loop"
        global_index = counters["global_step"]  # steps already taken by the whole stage
        lr = cfg.optimizer.lr * lr_factor(global_index, cfg.optimizer, plan.total_steps)
        batches = phase_data.micro_batches(
            step_index, dp_rank, dp_size, cfg.micro_batch_size, counters["phase_start_samples"]
        )
        loss, grad_norm = train_step(ddp, optimizer, batches, lr)
        loss = data_parallel_mean(loss)
        for name, n in phase_data.corpus_counts(step_index).items():
            counters["samples"][name] += n
        counters["phase_step"] = step
        counters["global_step"] = global_index + 1
        if step == 1:
            counters["first_loss"] = loss
        counters["last_loss"] = loss
        window_time += time.perf_counter() - started
        window_tokens += plan.tokens_per_step
        if step % cfg.log_every == 0 or step in (1, plan.steps):  # a phase's first and last always
            tps = window_tokens / max(window_time, 1e-9)
            metrics: dict[str, float] = {
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tps,
                **_consumed_tokens(counters["samples"], seq),
                **{f"consumed_samples_{n}": float(s) for n, s in counters["samples"].items()},
            }
            value = mfu(model_cfg, tps / max(ctx.dist.world_size, 1), device_name, bf16)
            if value is not None:
                metrics["mfu"] = value
            logger.log(counters["global_step"], metrics, force=True)
            window_tokens, window_time = 0, 0.0

    # The phase's hand-offs: the final Megatron checkpoint (next phase) and the HF export.
    counters = state.counters
    mcore_dir = save_final_checkpoint(state, ctx.output_dir / "mcore", ctx.dist.is_main)
    model_dir = export_hf_dir(model, model_cfg, tokenizer, ctx.output_dir / "model", ctx.dist.is_main)
    ctx.publish_model(model_dir, params={"global_step": counters["global_step"], "phase": phase.name})
    consumed_tokens = {n: s * seq for n, s in counters["samples"].items()}
    return StageResult(
        outputs={"model_dir": str(model_dir), "mcore_checkpoint": str(mcore_dir)},
        metrics={
            "loss": float(counters["last_loss"]),
            "loss_first": float(counters["first_loss"]),
            "global_step": float(counters["global_step"]),
            **_consumed_tokens(counters["samples"], seq),
        },
        tokens=plan.steps * plan.tokens_per_step,
        extra={
            "pretrain": {
                "phase": phase.name,
                "blend": blend,
                "phase_steps": plan.steps,
                "global_step": counters["global_step"],
                "total_steps": plan.total_steps,
                "consumed_samples": dict(counters["samples"]),
                "phase_start_samples": dict(counters["phase_start_samples"]),
                "consumed_tokens": consumed_tokens,
                "vocab_size": len(tokenizer),
                "world_size": ctx.dist.world_size,
                "data_parallel_size": dp_size,
            }
        },
    )
