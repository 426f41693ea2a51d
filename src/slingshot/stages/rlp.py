"""RLP — reinforcement as a pretraining objective (SPEC §2).

On ordinary text, at a position t the model writes a thought c between ``<think>`` and
``</think>``, then predicts x_t. Each step:

1. draw B positions from the corpus (uniform, or where a frozen proxy model's next-token
   entropy is above a threshold; the stream position is checkpointed);
   positions inside ``exclude_spans`` (a think block, ``\\boxed{}``, a user turn) are skipped;
2. sample G thoughts per position with the rollout backend from ``x_<t <think>``, written in
   ``thought_template`` (stop at its close, at end of text or a nested open, at most
   ``thought_tokens``); an unclosed thought is treated as ``unclosed_thought`` says
   (default: excluded from its group and the loss, logged as ``thought/unclosed_frac``);
3. score all B·G sequences ``x_<t <think> c </think> after x_t..x_{t+k-1}`` in one batched,
   teacher-forced, no-grad pass of the policy (θ_old at sampling time): the target
   log-probs give S_pred, the thought-token log-probs are kept as the old log-probs;
   the EMA teacher φ scores ``x_<t x_t..`` (no thought) for S_ema;
4. reward = S_pred − S_ema (per-token gains averaged over the k targets), advantages
   G/(G−1)·(r − mean_G r);
5. clipped policy-gradient updates on the thought tokens only ("seq-mean-token-mean"),
   no next-token-prediction term, no KL; after every optimizer step φ ← τφ + (1−τ)θ.

``objective: next_token`` runs the RLP paper's control instead (:func:`run_next_token`):
plain next-token training on the same positions' context and targets, no thought.

φ starts as a copy of the input model. The checkpoint holds policy, optimizer,
scheduler, φ, the position stream and the RNG, so a resumed run continues exactly.
The log-probs of θ_old and θ in the ratio are at the sampling ``temperature`` (the
distribution the thoughts came from, SPEC §7); S_pred and S_ema are the model's own (T = 1).
N ranks × M nodes: every rank draws the same B global positions and takes its share of
every mini-batch (whole groups: a position and its G thoughts; B/mini_batches must divide
by the world size). Thoughts are seeded per position, never per rank; the loss is normalised
by the global thought count and gradients are summed (FSDP2's reduce-scatter, or
``dist.all_reduce_grads``), so N ranks take the step one process takes. With
``data_parallel`` resolving to FSDP2 (the default on GPUs) the policy and φ are sharded on
the same mesh (φ's update is then shard by shard); on gloo (the default on CPU) each rank
holds whole copies, updated identically; rewards and metrics are gathered, rank 0 logs and writes. The position stream and batches are ``slingshot.train.rlp_batch``,
the scoring passes ``slingshot.train.rlp_scoring``, the update
``slingshot.train.policy_update.update_on_thoughts`` (shared with ProRL).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from slingshot import dist
from slingshot.algorithms.rlp import parameter_distance
from slingshot.config import ChatConfig, RLPConfig
from slingshot.context import StageContext, StageResult
from slingshot.data.chat import single_token_id, stop_token_ids, turn_markers
from slingshot.data.corpora import CorpusSpec, read_corpus, record_text
from slingshot.data.packing import tokenize_documents
from slingshot.io import sha256_file
from slingshot.loop import resumable_steps
from slingshot.models.hf import (
    enable_activation_checkpointing,
    eval_mode_keeping_checkpoints,
    frozen_copy,
    load_causal_lm,
    load_model_and_tokenizer,
    save_model_dir,
)
from slingshot.models.sharding import full_model, full_value, shard_policy_and_copy
from slingshot.rollout import EngineWeights, RolloutBackend, make_rollout
from slingshot.train.logging import StepLogger
from slingshot.train.logprobs import PassSettings
from slingshot.train.optim import build_optimizer, build_scheduler
from slingshot.train.policy_update import (
    UpdateSettings,
    ema_teacher_hook,
    next_token_update,
    sampling_passes,
    update_on_thoughts,
)
from slingshot.train.rlp_batch import (
    PositionStream,
    SpanMarkers,
    ThoughtFormat,
    build_thought_batch,
    prompt_ids,
    proxy_entropy_fn,
    span_filter,
)
from slingshot.train.rlp_scoring import score_baseline, score_thoughts, thought_metrics, thought_rewards
from slingshot.train.state import Counter, TrainState


def special_ids(tokenizer: Any, chat: ChatConfig) -> tuple[int, int]:
    """Ids of the thinking tags (``chat.think_open``/``think_close``, ``<think>``/``</think>``
    by default); an error if either is not a single token of the tokenizer."""
    return (
        single_token_id(tokenizer, chat.think_open, "chat.think_open (RLP's thought opening)"),
        single_token_id(tokenizer, chat.think_close, "chat.think_close (RLP's thought closing)"),
    )


def sample_seed(seed: int, step: int, position: int) -> int:
    # Sampling depends only on (seed, step, the position's index in the step's global batch):
    # a resumed step draws the same thoughts, and so does any number of ranks.
    digest = hashlib.sha256(f"rlp-sample:{seed}:{step}:{position}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _gathered(values: torch.Tensor) -> torch.Tensor:
    """Every rank's ``values`` (the same shape but for dim 0), concatenated: global statistics."""
    if dist.world_size() == 1:
        return values
    return torch.cat(dist.all_gather_objects(values.detach().cpu()))


def _corpus(ctx: StageContext, name: str) -> tuple[CorpusSpec, str]:
    """The corpus the positions come from, and its content digest (for log_input)."""
    data = ctx.upstream_of_kind("data")
    path = data["outputs"].get(f"corpus_{name}")
    if path is not None:
        digest = data.get("data", {}).get("corpora", {}).get(name, {}).get("sha256")
        return CorpusSpec(name=name, path=path), digest or sha256_file(path)
    for spec in ctx.pipeline.data.extra_corpora:
        if spec.name == name:
            source = Path(spec.path)
            if source.is_file():
                return spec, sha256_file(source)
            return spec, data.get("data", {}).get("indexed", {}).get(name, {}).get("bin_sha256", "")
    known = sorted(k.removeprefix("corpus_") for k in data["outputs"] if k.startswith("corpus_"))
    known += [s.name for s in ctx.pipeline.data.extra_corpora]
    raise ValueError(f"stages.rlp.corpus: unknown corpus {name!r}; known: {', '.join(known)}")


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, RLPConfig)
    device = ctx.dist.device
    world, rank = ctx.dist.world_size, ctx.dist.rank
    per_mini = cfg.positions_per_step // cfg.mini_batches
    if per_mini % world:
        raise ValueError(
            f"rlp.positions_per_step: {cfg.positions_per_step} positions in {cfg.mini_batches} "
            f"mini_batches ({per_mini} each) do not divide over {world} ranks (each rank takes "
            "whole groups of every mini-batch)"
        )
    input_model = ctx.require_input_model()

    policy, tokenizer = load_model_and_tokenizer(input_model, device=device)
    policy.eval()  # no dropout: θ_old and θ log-probs agree exactly on-policy (ratio 1)
    special_ids(tokenizer, ctx.pipeline.chat)  # the think tags the spans are found by: one token each
    # Thoughts in the template the model saw; they end at its close or at end of text.
    fmt = ThoughtFormat.of(
        tokenizer, cfg.thought_template, stop_token_ids(tokenizer, ctx.pipeline.chat.stop_tokens)
    )
    user = turn_markers(tokenizer)
    markers = SpanMarkers(
        ctx.pipeline.chat.think_open, ctx.pipeline.chat.think_close, *(user or (None, None))
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # φ: a copy of the input model at the first step (a resume overwrites it from the checkpoint).
    memory, passes = cfg.memory, PassSettings.from_memory(cfg.memory)
    ema = frozen_copy(policy, memory.frozen_copy) if cfg.objective == "rlp" else None
    if memory.activation_checkpointing:
        enable_activation_checkpointing(policy)
        eval_mode_keeping_checkpoints(policy)

    entropy_fn = None
    if cfg.position_selection == "entropy":
        # The proxy is frozen: the input model as loaded (never the drifting policy), or another model.
        proxy = load_causal_lm(cfg.proxy_model, device=device) if cfg.proxy_model else copy.deepcopy(policy)
        proxy.eval().requires_grad_(False)
        proxy_passes = dataclasses.replace(passes, entropy_top_k=cfg.entropy_top_k)
        entropy_fn = proxy_entropy_fn(proxy, pad_id, cfg.micro_batch_size, device, proxy_passes)

    spec, digest = _corpus(ctx, cfg.corpus)
    ctx.log_file_input(f"corpus-{spec.name}", spec.path, context="training", digest=digest)

    def documents() -> Iterator[str]:
        return (record_text(r) for r in read_corpus(spec))

    stream = PositionStream.from_config(
        cfg,
        documents,
        lambda texts: tokenize_documents(tokenizer, texts),
        seed=ctx.pipeline.pipeline.seed,
        bos_id=tokenizer.bos_token_id,
        entropy_fn=entropy_fn,
        excluded=span_filter(tokenizer, markers, cfg.exclude_spans),
    )
    # After every copy of the whole policy is taken (φ, the proxy): FSDP2 shards in place.
    shard_policy_and_copy(cfg.data_parallel, ctx.dist, policy, ema, memory, "rlp")
    optimizer = build_optimizer(policy, cfg.optimizer)
    updates = cfg.steps * cfg.ppo_epochs * cfg.mini_batches
    scheduler = build_scheduler(optimizer, cfg.optimizer, updates)
    # This rank's positions: its share of every mini-batch (all of them in one process).
    mine = dist.minibatch_shard(cfg.positions_per_step, per_mini, rank, world)
    if cfg.objective == "next_token":  # the control: the same positions, no thought
        return run_next_token(ctx, policy, tokenizer, stream, optimizer, scheduler, pad_id, mine)
    assert ema is not None
    progress = Counter(tokens=0, thought_tokens=0, last_metrics={})
    backend: RolloutBackend = make_rollout(cfg.rollout, policy, tokenizer, fmt.stop_ids, stage=ctx.stage)
    state = TrainState(
        ctx.dist.is_main,  # every rank holds the same state: rank 0 writes it
        model=policy,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        stream=stream,
        progress=progress,
        engine=EngineWeights(backend, policy),  # after the policy: a resume pushes its weights
    )
    settings = UpdateSettings.from_config(cfg, world)
    follow_policy = ema_teacher_hook(ema, policy, cfg.ema_tau)  # SPEC: after EVERY optimizer step
    logger = StepLogger(ctx, cfg.log_every)

    try:
        for step in resumable_steps(ctx, cfg.steps, state, all_ranks_write=True):  # DCP: every rank
            # Every rank draws the same global positions and takes its share.
            drawn = stream.take(cfg.positions_per_step)
            positions = [drawn[i] for i in mine]

            t0 = time.perf_counter()
            prompts = [prompt_ids(p, fmt.open_ids) for p in positions]
            rollouts = backend.generate(
                prompts,
                n=cfg.group_size,
                max_new_tokens=cfg.thought_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=[sample_seed(ctx.pipeline.pipeline.seed, step, i) for i in mine],
            )
            t1 = time.perf_counter()
            batch = build_thought_batch(positions, rollouts, fmt, None, pad_id, unclosed=cfg.unclosed_thought)
            scores = score_thoughts(policy, batch, cfg.micro_batch_size, device, sampling_passes(cfg))
            s_ema = score_baseline(ema, positions, pad_id, cfg.micro_batch_size, device, passes)
            scored = thought_rewards(scores.s_pred, s_ema, batch)  # an excluded thought: advantage 0
            advantages = scored.advantages
            t2 = time.perf_counter()
            update = update_on_thoughts(
                policy,
                optimizer,
                scheduler,
                batch,
                scores.old_logp,
                advantages,
                settings,
                device,
                follow_policy,
            )
            backend.sync_weights(policy, step=step)
            t3 = time.perf_counter()

            # The global batch's statistics (the update's are global already).
            lengths = _gathered(batch.thought_lengths)
            counts = dist.all_reduce_sum(
                {
                    "entropy_sum": scores.entropy_sum,
                    "thought_tokens": float(scores.thought_tokens),
                    "tokens": float(batch.tokens),
                    "tokens_per_s": float(batch.thought_lengths.sum()) / max(t1 - t0, 1e-9),
                }
            )
            generated = int(lengths.sum())
            metrics = {
                "weight_version": float(rollouts[0][0].weight_version),  # the weights the thoughts came from
                # Over every rank's thoughts: the global batch's statistics.
                **thought_metrics(
                    _gathered(scored.rewards),
                    _gathered(scored.valid),
                    _gathered(batch.closed),
                    _gathered(batch.ended),
                ),
                "s_pred": float(_gathered(scores.s_pred).mean()),
                "s_ema": float(_gathered(s_ema).mean()),
                "thought_len": float(lengths.float().mean()),
                "policy_entropy": counts["entropy_sum"] / max(counts["thought_tokens"], 1.0),
                **update,
                "ema_distance": float(full_value(parameter_distance(ema.parameters(), policy.parameters()))),
                "time_generate_s": t1 - t0,  # this rank's (rank 0 logs)
                "time_score_s": t2 - t1,
                "time_update_s": t3 - t2,
                "thought_tokens_per_s": counts["tokens_per_s"],  # summed over ranks
            }
            if cfg.position_selection == "entropy":
                metrics["selected_frac"] = stream.selected / max(stream.candidates, 1)
            progress["tokens"] += int(counts["tokens"])
            progress["thought_tokens"] += generated
            progress["last_metrics"] = metrics
            logger.log(step, {**metrics, "tokens": float(progress["tokens"])}, force=step == cfg.steps)
    finally:
        backend.close()  # the engine goes with the stage, also when it fails

    final = dict(progress["last_metrics"])
    keys = ("reward_mean", "gain_positive_frac", "s_pred", "s_ema", "thought_len", "ema_distance")
    return StageResult(
        outputs={"model_dir": str(publish(ctx, policy, tokenizer))},
        metrics={k: final[k] for k in keys if k in final},
        tokens=int(progress["tokens"]),
        extra={"thought_tokens": int(progress["thought_tokens"])},
    )


def run_next_token(
    ctx: StageContext,
    policy: torch.nn.Module,
    tokenizer: Any,
    stream: PositionStream,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    pad_id: int,
    mine: list[int],
) -> StageResult:
    """``objective: next_token``, the RLP paper's control: each step trains plain next-token
    prediction on the step's positions (their context and targets: the tokens RLP reads),
    with RLP's steps, mini-batches, optimizer and schedule; checkpointed and resumed the same way."""
    cfg = ctx.config
    assert isinstance(cfg, RLPConfig)
    progress = Counter(tokens=0, last_metrics={})
    state = TrainState(
        ctx.dist.is_main,
        model=policy,
        optimizer=optimizer,
        scheduler=scheduler,
        stream=stream,
        progress=progress,
    )
    settings = UpdateSettings.from_config(cfg, ctx.dist.world_size)
    logger = StepLogger(ctx, cfg.log_every)
    for step in resumable_steps(ctx, cfg.steps, state, all_ranks_write=True):
        drawn = stream.take(cfg.positions_per_step)
        positions = [drawn[i] for i in mine]
        metrics = next_token_update(
            policy, optimizer, scheduler, positions, pad_id, settings, ctx.dist.device
        )
        progress["tokens"] += int(metrics.pop("tokens"))
        progress["last_metrics"] = metrics
        logger.log(step, {**metrics, "tokens": float(progress["tokens"])}, force=step == cfg.steps)
    return StageResult(
        outputs={"model_dir": str(publish(ctx, policy, tokenizer))},
        metrics=dict(progress["last_metrics"]),
        tokens=int(progress["tokens"]),
    )


def publish(ctx: StageContext, policy: torch.nn.Module, tokenizer: Any) -> Path:
    """The trained policy as an HF directory (rank 0 writes), logged as the stage's model."""
    cfg = ctx.config
    assert isinstance(cfg, RLPConfig)
    model_dir = ctx.output_dir / "model"
    exported = full_model(policy, ctx.dist.is_main)  # collective when sharded
    if exported is not None:
        save_model_dir(exported, tokenizer, model_dir)
    ctx.publish_model(model_dir, {"steps": cfg.steps, "objective": cfg.objective})
    dist.barrier()
    return model_dir
