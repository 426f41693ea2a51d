"""ProRL: prolonged RL with verifiable rewards (SPEC §5), one length-schedule phase per job.

Each step:
  1. sample prompts from the training tasks and the user prompt sets (``datasets``, mixed
     by weight; a seeded, resumable stream), ``n_samples`` responses each, score them with
     the family's or the set's verifier (truncated -> 0, optional overlong ramp; per-set
     rewards logged as ``reward/<set>``), and keep only groups whose rewards are not all equal, sampling more
     prompts until the batch is full (at most ``max_gen_batches`` generation batches);
  2. group-normalised advantages (GRPO, or Dr.GRPO without the std);
  3. log-probs of the behaviour policy (θ_old) and the reference, then one clipped
     update per mini-batch (decoupled ε_low/ε_high, optional top-entropy token mask)
     plus β·KL to the reference;
  4. the entropy controller moves ε_high; validation pass@1 every ``val_every`` steps;
     the reference (and optionally the optimizer) is reset periodically or on a plateau.

The sampling, scoring and reset bookkeeping are ``slingshot.train.rl_sampling``; the
update is ``slingshot.train.policy_update.update_on_groups`` (shared with RLP).

Everything a resume needs is in the checkpoint: policy, reference, optimizer, scheduler,
entropy controller, reset bookkeeping, prompt-stream position and RNG. A resume never
re-anchors the reference to the resumed weights (that silently zeroes the KL). A new
length-schedule phase is a new job that starts from the previous phase's HF model, so
its reference starts there too: the phase boundary acts as a reference reset.
N ranks × M nodes (one task per GPU or CPU process): with ``data_parallel`` resolving to
FSDP2 (the default on GPUs) the policy and the reference are sharded over the ranks
(``slingshot.models.sharding``: HF generation gathers the policy once per call, a vLLM push
gathers each tensor); on gloo (the default on CPU) every rank holds whole copies. Each rank
has its own rollout backend (HF generate on the policy, or a vLLM engine per rank). Each generation batch's prompts are split over the ranks by whole
groups, the scored groups are gathered so dynamic sampling decides globally, and each rank
trains on its share of every mini-batch; the loss is normalised by the global token count
and gradients are summed (FSDP2's reduce-scatter, or ``dist.all_reduce_grads``), so N ranks
take the step one process takes on the same ``batch_prompts`` (which, like
``mini_batch_prompts`` and the prompts per generation batch, must divide by the world size).
Validation prompts are sharded and pass@1 gathered; rank 0 logs and writes the model (a
sharded one gathered to it).
With ``rollout.async_steps: 1`` (one process only) the vLLM engine runs in a process of its
own and generates step t+1's batch while step t's update runs; the importance ratio is then
against the engine's log-probs (the behaviour policy, one weight version behind), and
``weight_lag`` logs the lag.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from slingshot import dist
from slingshot.config import ProRLConfig, ProRLPhase
from slingshot.context import StageContext, StageResult
from slingshot.data.chat import ChatFormat
from slingshot.data.prompt_sets import load_prompt_set
from slingshot.data.tasks import derive_seed, load_entries
from slingshot.loop import resumable_steps
from slingshot.models.hf import (
    enable_activation_checkpointing,
    frozen_copy,
    load_model_and_tokenizer,
    save_model_dir,
)
from slingshot.models.sharding import full_model, shard_policy_and_copy
from slingshot.rollout import EngineWeights, make_rollout
from slingshot.train.logging import StepLogger
from slingshot.train.optim import build_optimizer, build_scheduler
from slingshot.train.policy_update import UpdateSettings, update_on_groups
from slingshot.train.rl_sampling import (
    CollectAhead,
    GroupSampler,
    entropy_controller,
    fresh_book,
    make_train_batch,
    plateaued,
    prompt_stream,
    rank_groups,
    reset_reference,
    track_signal,
    track_validation,
    validation_prompts,
)
from slingshot.train.state import TrainState


def _phase(cfg: ProRLConfig, name: str | None) -> ProRLPhase:
    if name is None:
        if len(cfg.phases) != 1:
            raise ValueError(f"prorl has {len(cfg.phases)} phases: the stage needs ctx.phase")
        return cfg.phases[0]
    for phase in cfg.phases:
        if phase.name == name:
            return phase
    raise ValueError(f"prorl phase {name!r} is not in the config (have {[p.name for p in cfg.phases]})")


def _restrict(entries: list[dict], families: list[str] | None, split: str) -> list[dict]:
    if families is None:
        return entries
    present = {e["family"] for e in entries}
    missing = sorted(set(families) - present)
    if missing:
        raise ValueError(
            f"prorl.tasks names families with no {split} tasks: {missing} (have {sorted(present)})"
        )
    return [e for e in entries if e["family"] in families]


def check_world_size(cfg: ProRLConfig, world: int) -> None:
    """Every split of the global batch over ``world`` ranks is by whole groups, evenly."""
    if world == 1:
        return
    if cfg.rollout.async_steps:
        raise ValueError(
            f"prorl.rollout.async_steps: one-step-async rollouts run in one process only; this job "
            f"has {world} ranks (set async_steps: 0, or resources to one task)"
        )
    per_gen = math.ceil(cfg.over_provision * cfg.batch_prompts)
    for key, value in (
        ("batch_prompts", cfg.batch_prompts),
        ("mini_batch_prompts", cfg.mini_batch_prompts),
        ("over_provision", per_gen),
    ):
        if value % world:
            what = f"ceil(over_provision x batch_prompts) = {value}" if key == "over_provision" else value
            raise ValueError(
                f"prorl.{key}: {what} prompts do not divide over {world} ranks (the global batch "
                "is split by whole groups; make it a multiple of the world size)"
            )


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, ProRLConfig)
    check_world_size(cfg, ctx.dist.world_size)
    phase = _phase(cfg, ctx.phase)
    seed = derive_seed(ctx.pipeline.pipeline.seed, "prorl", phase.name)
    device = ctx.dist.device
    input_model = ctx.require_input_model()

    data = ctx.upstream_of_kind("data")
    train_path, val_path = data["outputs"]["tasks_train"], data["outputs"]["tasks_validation"]
    train_entries = _restrict(load_entries(train_path), cfg.tasks, "train") if cfg.task_weight > 0 else []
    val_entries = _restrict(load_entries(val_path), cfg.tasks, "validation")
    val_entries = validation_prompts(val_entries, cfg.val_prompts)
    ctx.log_file_input("tasks-train", train_path, context="training")
    ctx.log_file_input("tasks-validation", val_path, context="validation")
    # User prompt sets, converted (and validated) by the data stage, mixed in by weight.
    sets = {spec.name: load_prompt_set(data["outputs"], spec.name) for spec in cfg.datasets}
    for name in sets:
        ctx.log_file_input(f"prompt-set-{name}", data["outputs"][f"prompt_set_{name}"], context="training")

    policy, tokenizer = load_model_and_tokenizer(input_model, device=device)
    policy.train()
    # β = 0 disables the reference model entirely: no copy, no forward pass.
    reference = frozen_copy(policy, cfg.memory.frozen_copy) if cfg.kl_coef > 0 else None
    if cfg.memory.activation_checkpointing:
        enable_activation_checkpointing(policy)
    shard_policy_and_copy(cfg.data_parallel, ctx.dist, policy, reference, cfg.memory, "prorl")
    optimizer = build_optimizer(policy, cfg.optimizer)
    updates_per_step = cfg.batch_prompts // cfg.mini_batch_prompts
    scheduler = build_scheduler(optimizer, cfg.optimizer, phase.steps * updates_per_step)
    controller = entropy_controller(cfg)
    stream = prompt_stream(cfg, train_entries, sets, seed)
    book = fresh_book()
    parts: dict[str, Any] = dict(
        policy=policy,
        optimizer=optimizer,
        scheduler=scheduler,
        controller=controller,
        stream=stream,
        book=book,
    )
    if reference is not None:
        parts["reference"] = reference

    # Stops on EOS and the chat template's end-of-turn token; answers follow chat.think_close.
    chat = ChatFormat.of(tokenizer, ctx.pipeline.chat)
    backend = make_rollout(cfg.rollout, policy, tokenizer, chat.stop_ids, stage=ctx.stage)
    parts["engine"] = EngineWeights(backend, policy)  # after the policy: a resume pushes its weights
    sampler = GroupSampler(backend, tokenizer, cfg, phase.max_response_tokens, seed, chat.think_tags)
    # One-step-async: step t+1's batch is collected while step t's update runs (and checkpointed).
    ahead = CollectAhead(sampler, stream) if cfg.rollout.async_steps else None
    if ahead is not None:
        parts["ahead"] = ahead
    state = TrainState(ctx.dist.is_main, **parts)  # every rank holds the same state: rank 0 writes it
    settings = UpdateSettings.from_config(cfg, ctx.dist.world_size)
    logger = StepLogger(ctx, cfg.log_every)
    if ctx.checkpoints.latest() is None:  # fresh start: the curve's step-0 point
        val = sampler.validate(val_entries)
        track_validation(book, val["val/pass_at_1"])
        if ctx.dist.is_main:
            ctx.tracker.log_metrics(val, step=0)
            print(f"[{ctx.stage}] step 0 " + " ".join(f"{k}={v:.4g}" for k, v in val.items()), flush=True)

    metrics: dict[str, float] = {}
    last_val: dict[str, float] = {}
    try:
        for step in resumable_steps(ctx, phase.steps, state, all_ranks_write=True):  # DCP: every rank
            started = time.monotonic()
            if ahead is None:
                groups, gen = sampler.collect(stream, step)
            else:
                groups, gen = ahead.take(step)
                if step < phase.steps:
                    ahead.start(step + 1)  # with the weights this step's update starts from
            book["tokens"] += gen.pop("tokens_generated")
            metrics = dict(gen)
            # A run with no learning signal must say so (and may be configured to fail).
            track_signal(book, len(groups), gen["pass_rate"], cfg)
            metrics["no_signal_steps"] = float(book["no_signal_steps"])
            # Staleness: the trainer's weights are this many pushes ahead of the rollouts' (0 when sync).
            metrics["weight_lag"] = backend.weight_version - gen["weight_version"]
            if groups:
                train = make_train_batch(rank_groups(groups, cfg), cfg, tokenizer.pad_token_id)
                step_settings = dataclasses.replace(settings, eps_high=controller.eps_high)
                update_started = time.monotonic()
                metrics.update(
                    update_on_groups(policy, reference, optimizer, scheduler, train, step_settings, device)
                )
                if ahead is not None:
                    ahead.wait()  # the next batch is sampled with the weights it started with
                backend.sync_weights(policy, step=step)
                metrics["time_update_s"] = time.monotonic() - update_started
                control = cfg.entropy_control
                metrics["eps_high"] = (
                    controller.update(metrics[control.signal]) if control.enabled else controller.eps_high
                )
            else:
                # Nothing learnable after max_gen_batches: skip the update rather than train on zeros
                # (track_signal above counts it and warns).
                metrics["eps_high"] = controller.eps_high
            metrics["step_time_s"] = time.monotonic() - started

            reset_reason = None
            if step % cfg.val_every == 0 or step == phase.steps:
                last_val = sampler.validate(val_entries)
                metrics.update(last_val)
                if track_validation(book, last_val["val/pass_at_1"]) and plateaued(cfg, book):
                    reset_reason = "plateau"
            every = cfg.reference_reset.every_steps
            if every and step % every == 0 and step < phase.steps:
                reset_reason = reset_reason or "periodic"
            if reset_reason:
                reset_reference(policy, reference, optimizer, cfg.reference_reset.reset_optimizer)
                book["resets"] += 1
                book["last_reset_step"] = step
                book["evals_since_best"] = 0
            metrics["ref_reset"] = 1.0 if reset_reason else 0.0
            metrics["resets"] = float(book["resets"])
            metrics["tokens"] = float(book["tokens"])
            logger.log(
                step, metrics, force=step == phase.steps or bool(reset_reason) or "val/pass_at_1" in metrics
            )
    finally:
        # The engine (a process of its own when async) goes with the stage, also when it fails:
        # an in-process caller (tests, the inprocess launcher) would otherwise keep it alive.
        if ahead is not None:
            ahead.close()
        backend.close()

    model_dir = ctx.output_dir / "model"
    exported = full_model(policy, ctx.dist.is_main)  # collective when sharded
    if exported is not None:
        save_model_dir(exported, tokenizer, model_dir)
    ctx.publish_model(model_dir, {"phase": phase.name})
    dist.barrier()  # no rank reports done before the model directory exists
    final = {k: v for k, v in {**metrics, **last_val}.items() if isinstance(v, int | float)}
    return StageResult(
        outputs={"model_dir": str(model_dir)},
        metrics=final,
        tokens=int(book["tokens"]),
        extra={
            "prorl": {
                "phase": phase.name,
                "resets": int(book["resets"]),
                "best_val": book["best_val"],
                # Steps that trained nothing (every group dropped by dynamic sampling).
                "no_signal_steps": int(book.values.get("no_signal_steps", 0)),
            }
        },
    )
