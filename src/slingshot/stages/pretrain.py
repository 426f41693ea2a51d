"""Front-loaded reasoning pretraining (SPEC 1) on Megatron-Core: one job per phase.

Each phase node (``pretrain-<phase>``) trains the Megatron-Core GPT on a BlendedDataset
of the data stage's indexed corpora with the phase's blend, for its share of the
stage's tokens (``token_fraction * total_tokens``). The learning-rate schedule (warmup,
then cosine to ``min_lr_ratio`` of the peak) spans ALL phases, so phase ``i`` continues
at the global step where phase ``i-1`` ended: it starts from the previous phase's FINAL
Megatron checkpoint (model, optimizer, consumed-token counts), never from the HF export.

Outputs of a phase: ``mcore_checkpoint`` (sharded dist_checkpointing directory the next
phase starts from) and ``model_dir`` (the exact HF Llama/Qwen2 export for RLP,
evaluation and the rest of the chain).

Data (``slingshot.models.megatron_data``): each corpus is one GPTDataset stream for the
whole stage; a phase's BlendedDataset picks which corpus each sample comes from, and
phase 2 continues every stream at the samples phase 1 consumed of it.

Exact resume: a checkpoint holds the sharded model and optimizer (Adam moments and
step), the global step (which is the lr schedule's state), the phase's data position
(the datasets are pure functions of the config, so the step and the per-corpus counts
are enough), samples consumed per corpus, and every rank's RNG streams.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from slingshot.checkpoint import load_torch, rng_state, save_torch, set_rng_state
from slingshot.config import PretrainConfig
from slingshot.context import StageContext, StageResult
from slingshot.io import atomic_write_text, fsync_dir, sha256_file
from slingshot.loop import resumable_steps
from slingshot.train.logging import StepLogger
from slingshot.train.optim import lr_factor

COUNTERS_FILE = "pretrain_state.pt"  # written by rank 0: step, data position, consumption
MCORE_DIR = "mcore"  # dist_checkpointing shards of model + optimizer


# --------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class PhasePlan:
    """Where a phase sits in the stage's global step count (the lr schedule's x-axis)."""

    index: int
    name: str
    steps: int  # optimizer steps of this phase
    offset: int  # global steps taken by the phases before it
    total_steps: int  # global steps of the whole stage (all phases)
    tokens_per_step: int


def plan_phases(cfg: PretrainConfig) -> list[PhasePlan]:
    """Steps per phase from its token budget; each phase takes at least one step."""
    tokens_per_step = cfg.global_batch_size * cfg.model.seq_length
    steps = [max(1, round(p.token_fraction * cfg.total_tokens / tokens_per_step)) for p in cfg.phases]
    plans, offset = [], 0
    for i, (phase, n) in enumerate(zip(cfg.phases, steps, strict=True)):
        plans.append(PhasePlan(i, phase.name, n, offset, sum(steps), tokens_per_step))
        offset += n
    return plans


def phase_plan(cfg: PretrainConfig, phase: str | None) -> PhasePlan:
    plans = plan_phases(cfg)
    if phase is None:
        if len(plans) != 1:
            raise ValueError("this pretrain node has no phase but the config has several")
        return plans[0]
    for plan in plans:
        if plan.name == phase:
            return plan
    raise KeyError(f"phase '{phase}' is not in the pretrain config (have {[p.name for p in plans]})")


# --------------------------------------------------------------------------- state
class PretrainState:
    """model + optimizer (sharded, every rank writes) + counters and RNG (small files)."""

    def __init__(self, model: Any, optimizer: Any, counters: dict[str, Any]):
        self.model = model  # the GPTModel inside Megatron's DDP
        self.optimizer = optimizer
        self.counters = counters
        # A work-dir checkpoint must belong to this phase and blend: a resume never
        # silently changes the data of a phase.
        self.expect: dict[str, Any] | None = None

    def save(self, directory: Path) -> None:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        from slingshot.models.megatron_checkpoint import save_sharded

        save_sharded(directory / MCORE_DIR, self.model, self.optimizer)
        rank = dist.get_rank() if dist.is_initialized() else 0
        save_torch(
            directory / f"rng.rank{rank}.pt",
            {"rng": rng_state(), "megatron_rng": get_cuda_rng_tracker().get_states()},
        )
        if rank == 0:
            save_torch(directory / COUNTERS_FILE, self.counters)
        if dist.is_initialized():
            dist.barrier()

    def load(self, directory: Path) -> None:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        from slingshot.models.megatron_checkpoint import load_sharded

        counters = load_torch(directory / COUNTERS_FILE)
        if self.expect is not None:
            found = {k: counters.get(k) for k in self.expect}
            if found != self.expect:
                raise ValueError(
                    f"checkpoint {directory} was written for {found}, this job is {self.expect}: "
                    "remove the work dir's checkpoints to restart the phase with the new data"
                )
        load_sharded(directory / MCORE_DIR, self.model, self.optimizer)
        self.counters = counters
        rank = dist.get_rank() if dist.is_initialized() else 0
        rng_file = directory / f"rng.rank{rank}.pt"
        if rng_file.is_file():  # absent when resuming at a larger data-parallel size
            payload = load_torch(rng_file)
            set_rng_state(payload["rng"])
            get_cuda_rng_tracker().set_states(payload["megatron_rng"])


def _publish_dir(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete directory ``tmp`` (rank 0, after every rank wrote)."""
    for dirpath, _, filenames in os.walk(tmp):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(dirpath)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _broadcast(obj: Any) -> Any:
    if dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def save_final_checkpoint(state: PretrainState, out: Path, is_main: bool) -> Path:
    """Collective: the phase's final Megatron checkpoint, written whole or not at all."""
    tmp = None
    if is_main:
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp = Path(_broadcast(str(tmp) if tmp else None))
    state.save(tmp)
    if is_main:
        atomic_write_text(tmp / "COMPLETE", f"global_step {state.counters['global_step']}\n")
        _publish_dir(tmp, out)
    if dist.is_initialized():
        dist.barrier()
    return out


def export_hf(model: Any, model_cfg: Any, tokenizer: Any, out: Path, is_main: bool) -> Path:
    """Collective over the model-parallel group: gather shards; rank 0 writes the HF dir atomically."""
    from slingshot.models.export import export_to_hf, gather_state_dicts_for_export

    grid = gather_state_dicts_for_export(model)
    if is_main:
        assert grid is not None
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            export_to_hf(grid, model_cfg, tmp, tokenizer)
            _publish_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if dist.is_initialized():
        dist.barrier()
    return out


# --------------------------------------------------------------------------- step
def train_step(
    ddp: Any, optimizer: Any, micro_batches: list[dict[str, torch.Tensor]], lr: float
) -> tuple[float, float]:
    """One optimizer step over this rank's micro-batches (gradient accumulation).

    Each micro-batch's masked token-mean loss is scaled by 1/n_micro and Megatron's DDP
    averages over data-parallel ranks, so the update equals one step on the global batch
    whatever the DP size. Returns (this rank's mean loss, global grad norm before clipping).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    total = torch.zeros(())
    for batch in micro_batches:
        per_token = ddp(batch["tokens"], None, None, labels=batch["labels"])  # [b, s] fp32 CE
        mask = batch["loss_mask"].to(per_token.dtype)
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
        (loss / len(micro_batches)).backward()
        total += loss.detach().float().cpu()
    ddp.finish_grad_sync()
    _ok, grad_norm, _zeros = optimizer.step()
    return float(total) / len(micro_batches), float(grad_norm or 0.0)


def _dp_mean(value: float) -> float:
    from megatron.core import parallel_state

    if not dist.is_initialized() or parallel_state.get_data_parallel_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=parallel_state.get_data_parallel_group())
    return float(t.item()) / parallel_state.get_data_parallel_world_size()


# --------------------------------------------------------------------------- stage
def run(ctx: StageContext) -> StageResult:
    from megatron.core import parallel_state

    from slingshot.models.megatron_gpt import init_model_parallel

    cfg = ctx.config
    assert isinstance(cfg, PretrainConfig)
    if cfg.parallel.pipeline_parallel_size != 1:
        # The step below is a plain forward/backward (no pipeline schedule).
        raise ValueError("parallel.pipeline_parallel_size > 1 is not supported by the pretrain stage yet")
    created_group = not dist.is_initialized()  # a single process: we own the world-1 group
    init_model_parallel(
        cfg.parallel.tensor_parallel_size,
        cfg.parallel.pipeline_parallel_size,
        seed=ctx.pipeline.pipeline.seed,
    )
    try:
        return _train(ctx, cfg)
    finally:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(ctx: StageContext, cfg: PretrainConfig) -> StageResult:
    from megatron.core import parallel_state

    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.flops import mfu
    from slingshot.models.megatron_data import build_phase_data, corpus_budgets
    from slingshot.models.megatron_gpt import build_gpt
    from slingshot.models.megatron_train import wrap_for_training

    plans = plan_phases(cfg)
    plan = phase_plan(cfg, ctx.phase)
    phase = cfg.phases[plan.index]
    data = ctx.upstream_of_kind("data")
    tokenizer = load_tokenizer(data["outputs"]["tokenizer_dir"])
    # The data tokenizer decides the vocabulary; Megatron pads it for TP.
    model_cfg = cfg.model.model_copy(update={"vocab_size": len(tokenizer)})
    seq = model_cfg.seq_length
    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    if cfg.global_batch_size % (cfg.micro_batch_size * dp_size):
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size "
            f"{cfg.micro_batch_size} x data-parallel size {dp_size}"
        )

    torch.manual_seed(ctx.pipeline.pipeline.seed)  # CPU-initialised full weights: identical on every rank
    model = build_gpt(model_cfg, cfg.parallel, bf16=cfg.precision == "bf16")
    ddp, optimizer = wrap_for_training(
        model,
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        betas=cfg.optimizer.betas,
        clip_grad=cfg.optimizer.grad_clip,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        bf16=cfg.precision == "bf16",
    )
    all_corpora = list(dict.fromkeys(name for p in cfg.phases for name in p.blend))
    blend = dict(phase.blend)
    state = PretrainState(
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
    fresh = ctx.checkpoints.latest() is None
    if fresh and plan.index > 0:
        _start_from_previous_phase(ctx, state, plan, all_corpora)
    state.expect = {"phase": phase.name, "blend": blend}

    # The phase's data: its BlendedDataset order over stage-long corpus streams (the same
    # streams in every phase, continued from what earlier phases consumed).
    budgets = corpus_budgets(
        [(p.blend, pl.steps * cfg.global_batch_size) for p, pl in zip(cfg.phases, plans, strict=True)]
    )
    phase_data = build_phase_data(
        tokenizer,
        {
            name: data["outputs"][f"indexed_{name}"]
            for name in all_corpora
            if f"indexed_{name}" in data["outputs"]
        },
        blend,
        sequence_length=seq,
        num_samples=plan.steps * cfg.global_batch_size,
        global_batch_size=cfg.global_batch_size,
        seed=ctx.pipeline.pipeline.seed,
        budgets=budgets,
    )
    if ctx.dist.is_main:
        _log_inputs(ctx, data, blend)
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
    bf16 = cfg.precision == "bf16"
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
        loss = _dp_mean(loss)
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
                **{f"consumed_tokens_{n}": float(s * seq) for n, s in counters["samples"].items()},
                **{f"consumed_samples_{n}": float(s) for n, s in counters["samples"].items()},
            }
            value = mfu(model_cfg, tps / max(ctx.dist.world_size, 1), device_name, bf16)
            if value is not None:
                metrics["mfu"] = value
            logger.log(counters["global_step"], metrics, force=True)
            window_tokens, window_time = 0, 0.0

    # The phase's hand-offs: the final Megatron checkpoint (next phase) and the HF export.
    counters = state.counters
    mcore_dir = save_final_checkpoint(state, ctx.output_dir / MCORE_DIR, ctx.dist.is_main)
    model_dir = export_hf(model, model_cfg, tokenizer, ctx.output_dir / "model", ctx.dist.is_main)
    if ctx.dist.is_main:
        ctx.tracker.log_model_dir(
            f"{ctx.variant}-{ctx.stage}".strip("-"),
            model_dir,
            params={"global_step": counters["global_step"], "phase": phase.name},
        )
    consumed_tokens = {n: s * seq for n, s in counters["samples"].items()}
    metrics = {
        "loss": float(counters["last_loss"]),
        "loss_first": float(counters["first_loss"]),
        "global_step": float(counters["global_step"]),
        **{f"consumed_tokens_{n}": float(t) for n, t in consumed_tokens.items()},
    }
    return StageResult(
        outputs={"model_dir": str(model_dir), "mcore_checkpoint": str(mcore_dir)},
        metrics=metrics,
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


def _start_from_previous_phase(
    ctx: StageContext, state: PretrainState, plan: PhasePlan, all_corpora: list[str]
) -> None:
    """Load the previous phase's final Megatron checkpoint: weights, optimizer, step, consumption."""
    if not ctx.model_from or ctx.model_from not in ctx.upstream:
        raise ValueError(f"{ctx.stage}: phase {plan.name} needs the previous pretrain phase upstream")
    previous = ctx.upstream[ctx.model_from]
    checkpoint = previous.get("outputs", {}).get("mcore_checkpoint")
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


def _log_inputs(ctx: StageContext, data: dict[str, Any], blend: dict[str, float]) -> None:
    indexed = (data.get("data") or {}).get("indexed", {})
    for name in blend:
        prefix = data["outputs"][f"indexed_{name}"]
        digest = indexed.get(name, {}).get("bin_sha256") or sha256_file(prefix + ".bin")
        ctx.tracker.log_input(f"corpus-{name}", prefix + ".bin", digest, context="training")
