"""ProRL: prolonged RL with verifiable rewards (SPEC §5), one length-schedule phase per job.

Each step:
  1. sample prompts from the training tasks (a seeded, resumable stream), ``n_samples``
     responses each, score them with the family verifiers (truncated -> 0, optional
     overlong ramp), and keep only groups whose rewards are not all equal, sampling more
     prompts until the batch is full (at most ``max_gen_batches`` generation batches);
  2. group-normalised advantages (GRPO, or Dr.GRPO without the std);
  3. log-probs of the behaviour policy (θ_old) and the reference, then one clipped
     update per mini-batch (decoupled ε_low/ε_high, optional top-entropy token mask)
     plus β·KL to the reference;
  4. the entropy controller moves ε_high; validation pass@1 every ``val_every`` steps;
     the reference (and optionally the optimizer) is reset periodically or on a plateau.

Everything a resume needs is in the checkpoint: policy, reference, optimizer, scheduler,
entropy controller, reset bookkeeping, prompt-stream position and RNG. A resume never
re-anchors the reference to the resumed weights (that silently zeroes the KL). A new
length-schedule phase is a new job that starts from the previous phase's HF model, so
its reference starts there too: the phase boundary acts as a reference reset.
Single process: rollouts and updates share one device (world_size > 1 is refused).
"""

from __future__ import annotations

import copy
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from slingshot.algorithms.entropy import EntropyController, top_entropy_mask
from slingshot.algorithms.grpo import dynamic_sampling_mask, grpo_advantages
from slingshot.algorithms.kl import kl_penalty
from slingshot.algorithms.policy_loss import clipped_policy_loss
from slingshot.config import ProRLConfig, ProRLPhase
from slingshot.context import StageContext, StageResult
from slingshot.data.tasks import derive_seed, load_entries
from slingshot.data.teacher import task_prompt
from slingshot.io import sha256_file
from slingshot.loop import resumable_steps
from slingshot.models.hf import load_model_and_tokenizer, save_model_dir
from slingshot.rewards.verify import CORRECT_THRESHOLD, score
from slingshot.rollout import Rollout, RolloutBackend, make_rollout
from slingshot.train.logging import StepLogger
from slingshot.train.logprobs import token_logprobs
from slingshot.train.optim import build_optimizer, build_scheduler, clip_grad_norm
from slingshot.train.rl_batch import RLBatch, build_rl_batch, chat_prompt_ids, masked_mean
from slingshot.train.state import Counter, TrainState

# --------------------------------------------------------------------------- pieces


def overlong_penalty(length: int, max_tokens: int, ramp: int) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_tokens - ramp``, then linearly down
    to −1 at ``max_tokens`` (and −1 beyond). ``ramp = 0`` disables it."""
    if ramp <= 0:
        return 0.0
    start = max_tokens - ramp
    if length <= start:
        return 0.0
    return -min((length - start) / ramp, 1.0)


class PromptStream:
    """An endless, seeded shuffle of the training entries; its position is checkpointed.

    Each epoch is a fresh permutation from (seed, epoch), so a resume at (epoch, position)
    continues with exactly the prompts the uninterrupted run would have drawn.
    """

    def __init__(self, entries: Sequence[dict], seed: int):
        if not entries:
            raise ValueError("no training prompts: the task set is empty")
        self.entries = list(entries)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.entries)))
        random.Random(derive_seed(self.seed, "prorl-prompts", epoch)).shuffle(order)
        return order

    def take(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            out.append(self.entries[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "size": len(self.entries)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != len(self.entries):
            raise ValueError(
                f"checkpoint was taken over {state['size']} training prompts, this run has {len(self.entries)}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


@dataclass
class ScoredGroup:
    """One prompt's ``n`` responses with their rewards."""

    entry: dict
    rollouts: list[Rollout]
    rewards: list[float]  # training reward (verifier score + overlong penalty)
    correct: list[bool]  # binary verifier verdict (for pass rate)


@dataclass
class TrainBatch:
    """What one policy update consumes: kept groups only, flattened group-major."""

    groups: list[ScoredGroup]
    rewards: torch.Tensor  # [B, G]
    advantages: torch.Tensor  # [B * G]
    batch: RLBatch


def _completion_text(tokenizer: Any, ids: Sequence[int]) -> str:
    # Keep special tokens: </think> is one, and the extractor looks for it.
    return tokenizer.decode(list(ids), skip_special_tokens=False)


def score_group(
    entry: dict, rollouts: Sequence[Rollout], tokenizer: Any, cfg: ProRLConfig, max_tokens: int
) -> ScoredGroup:
    rewards, correct = [], []
    for r in rollouts:
        # A response cut off by the length limit has no final answer: reward 0 by definition,
        # even if a boxed value happened to be written before the cut.
        raw = score(entry, _completion_text(tokenizer, r.completion_ids)) if r.finished else 0.0
        ok = raw >= CORRECT_THRESHOLD
        value = (1.0 if ok else 0.0) if cfg.binary_reward else raw
        rewards.append(
            value + overlong_penalty(len(r.completion_ids), max_tokens, cfg.overlong_penalty_tokens)
        )
        correct.append(ok)
    return ScoredGroup(entry, list(rollouts), rewards, correct)


# --------------------------------------------------------------------------- the stage


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


def validation_prompts(entries: list[dict], n: int) -> list[dict]:
    """The first ``n`` of a round robin over families (each family's entries in id order):
    validation covers every family, not only the one whose ids sort first."""
    by_family: dict[str, list[dict]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: e["id"]):
        by_family[entry["family"]].append(entry)
    columns = [by_family[family] for family in sorted(by_family)]
    interleaved = [e for row in itertools.zip_longest(*columns) for e in row if e is not None]
    return interleaved[:n]


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    assert isinstance(cfg, ProRLConfig)
    if ctx.dist.world_size > 1:
        raise ValueError(
            "prorl runs as one process (rollouts and updates on one device); set resources so "
            "tasks_per_node=1 and nodes=1"
        )
    phase = _phase(cfg, ctx.phase)
    seed = derive_seed(ctx.pipeline.pipeline.seed, "prorl", phase.name)
    device = ctx.dist.device
    if ctx.input_model_dir is None:
        raise ValueError("prorl needs an input model (an upstream stage or init_model)")

    data = ctx.upstream_of_kind("data")
    train_path, val_path = data["outputs"]["tasks_train"], data["outputs"]["tasks_validation"]
    train_entries = _restrict(load_entries(train_path), cfg.tasks, "train")
    val_entries = _restrict(load_entries(val_path), cfg.tasks, "validation")
    val_entries = validation_prompts(val_entries, cfg.val_prompts)
    for name, path in (("tasks-train", train_path), ("tasks-validation", val_path)):
        ctx.tracker.log_input(
            name, path, sha256_file(path), context="training" if "train" in name else "validation"
        )

    policy, tokenizer = load_model_and_tokenizer(ctx.input_model_dir, device=device)
    policy.train()
    # β = 0 disables the reference model entirely: no copy, no forward pass.
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    optimizer = build_optimizer(policy, cfg.optimizer)
    updates_per_step = cfg.batch_prompts // cfg.mini_batch_prompts
    scheduler = build_scheduler(optimizer, cfg.optimizer, phase.steps * updates_per_step)
    ec = cfg.entropy_control
    controller = EntropyController(
        target_low=ec.target_low,
        target_high=ec.target_high,
        eps_high_min=ec.eps_high_min if ec.enabled else cfg.eps_high,
        eps_high_max=ec.eps_high_max if ec.enabled else cfg.eps_high,
        step_size=ec.step_size,
        eps_high=cfg.eps_high,
    )
    stream = PromptStream(train_entries, seed)
    # Reset bookkeeping, validation history and the token count: checkpointed with the rest.
    book = Counter(best_val=float("-inf"), evals_since_best=0, resets=0, last_reset_step=0, tokens=0)
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
    state = TrainState(**parts)

    stop_ids = [tokenizer.eos_token_id]
    backend = make_rollout(cfg.rollout, policy, tokenizer, stop_ids)
    prompt_cache: dict[str, list[int]] = {}

    def prompt_ids(entry: dict) -> list[int]:
        key = entry["id"]
        if key not in prompt_cache:
            prompt_cache[key] = chat_prompt_ids(tokenizer, task_prompt(entry))
        return prompt_cache[key]

    logger = StepLogger(ctx, cfg.log_every)
    if ctx.checkpoints.latest() is None:  # fresh start: the curve's step-0 point
        val = validate(backend, val_entries, prompt_ids, tokenizer, cfg, phase, seed)
        _track_validation(book, val["val/pass_at_1"])
        ctx.tracker.log_metrics(val, step=0)
        _print(ctx, 0, val)

    metrics: dict[str, float] = {}
    last_val: dict[str, float] = {}
    for step in resumable_steps(ctx, phase.steps, state):
        started = time.monotonic()
        groups, gen = collect_groups(backend, stream, prompt_ids, tokenizer, cfg, phase, seed, step)
        book["tokens"] += gen.pop("tokens_generated")
        metrics = dict(gen)
        if groups:
            train = make_train_batch(groups, cfg, tokenizer.pad_token_id)
            metrics.update(
                _train_on_batch(
                    policy, reference, optimizer, scheduler, train, cfg, controller.eps_high, device
                )
            )
            backend.sync_weights(policy)
            metrics["eps_high"] = controller.update(metrics["entropy"]) if ec.enabled else controller.eps_high
        else:
            # Nothing learnable after max_gen_batches: skip the update rather than train on zeros.
            metrics["eps_high"] = controller.eps_high
        metrics["step_time_s"] = time.monotonic() - started

        reset_reason = None
        if step % cfg.val_every == 0 or step == phase.steps:
            last_val = validate(backend, val_entries, prompt_ids, tokenizer, cfg, phase, seed)
            metrics.update(last_val)
            if _track_validation(book, last_val["val/pass_at_1"]) and _plateaued(cfg, book):
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

    model_dir = ctx.output_dir / "model"
    if ctx.dist.is_main:
        save_model_dir(policy, tokenizer, model_dir)
        ctx.tracker.log_model_dir(f"{ctx.variant}-{ctx.stage}", model_dir, {"phase": phase.name})
    final = {k: v for k, v in {**metrics, **last_val}.items() if isinstance(v, int | float)}
    return StageResult(
        outputs={"model_dir": str(model_dir)},
        metrics=final,
        tokens=int(book["tokens"]),
        extra={"prorl": {"phase": phase.name, "resets": int(book["resets"]), "best_val": book["best_val"]}},
    )


def _print(ctx: StageContext, step: int, metrics: dict[str, float]) -> None:
    if ctx.dist.is_main:
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[{ctx.stage}] step {step} {shown}", flush=True)


def _track_validation(book: Counter, value: float) -> bool:
    """Record one validation score; True when it did not improve on the best so far."""
    if value > book["best_val"]:
        book["best_val"] = value
        book["evals_since_best"] = 0
        return False
    book["evals_since_best"] += 1
    return True


def _plateaued(cfg: ProRLConfig, book: Counter) -> bool:
    m = cfg.reference_reset.plateau_evals
    return m is not None and book["evals_since_best"] >= m


@torch.no_grad()
def reset_reference(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    reset_optimizer: bool,
) -> None:
    """π_ref ← π_θ (the latest weights); optionally forget Adam's moments (ProRL v1)."""
    if reference is not None:
        reference.load_state_dict(policy.state_dict())
    if reset_optimizer:
        optimizer.state.clear()  # AdamW re-initialises moments and its step count lazily


def collect_groups(
    backend: RolloutBackend,
    stream: PromptStream,
    prompt_ids: Callable[[dict], list[int]],
    tokenizer: Any,
    cfg: ProRLConfig,
    phase: ProRLPhase,
    seed: int,
    step: int,
) -> tuple[list[ScoredGroup], dict[str, float]]:
    """Generate and score until ``batch_prompts`` groups with a learning signal are kept."""
    kept: list[ScoredGroup] = []
    seen: list[ScoredGroup] = []
    gen_batches = tokens = informative = 0
    for g in range(cfg.max_gen_batches):
        entries = stream.take(cfg.batch_prompts)
        rollouts = backend.generate(
            [prompt_ids(e) for e in entries],
            n=cfg.n_samples,
            max_new_tokens=phase.max_response_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=derive_seed(seed, "rollout", step, g),
        )
        gen_batches += 1
        groups = [
            score_group(e, rs, tokenizer, cfg, phase.max_response_tokens)
            for e, rs in zip(entries, rollouts, strict=True)
        ]
        tokens += sum(len(r.prompt_ids) + len(r.completion_ids) for rs in rollouts for r in rs)
        seen += groups
        keep = dynamic_sampling_mask(torch.tensor([grp.rewards for grp in groups], dtype=torch.float64))
        kept += [grp for grp, k in zip(groups, keep.tolist(), strict=True) if k]
        informative += int(keep.sum())
        if len(kept) >= cfg.batch_prompts:
            break
    kept = kept[: cfg.batch_prompts]
    flat = [r for grp in seen for r in grp.rollouts]
    lengths = torch.tensor([len(r.completion_ids) for r in flat], dtype=torch.float64)
    stats = {
        "reward_mean": sum(sum(grp.rewards) for grp in seen) / len(flat),
        "pass_rate": sum(sum(grp.correct) for grp in seen) / len(flat),
        "groups_kept_frac": informative / len(seen),
        "groups_trained": float(len(kept)),
        "gen_batches": float(gen_batches),
        "response_length": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "truncated_frac": sum(not r.finished for r in flat) / len(flat),
        "tokens_generated": float(tokens),
    }
    return kept, stats


def make_train_batch(groups: list[ScoredGroup], cfg: ProRLConfig, pad_token_id: int) -> TrainBatch:
    rewards = torch.tensor([grp.rewards for grp in groups], dtype=torch.float32)
    adv = grpo_advantages(rewards, normalize_std=cfg.normalize_std, eps=cfg.adv_eps).reshape(-1)
    batch = build_rl_batch(
        [(r.prompt_ids, r.completion_ids) for grp in groups for r in grp.rollouts], pad_token_id
    )
    return TrainBatch(groups, rewards, adv, batch)


def _logprobs(
    model: torch.nn.Module, batch: RLBatch, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return token_logprobs(model, batch.input_ids, batch.attention_mask, batch.position_ids, with_entropy)


def _train_on_batch(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainBatch,
    cfg: ProRLConfig,
    eps_high: float,
    device: torch.device,
) -> dict[str, float]:
    """θ_old and reference log-probs for the whole batch, then one clipped update per mini-batch."""
    n = cfg.n_samples
    rows_per_mb = cfg.mini_batch_prompts * n
    starts = list(range(0, train.batch.size, rows_per_mb))
    minibatches = [train.batch.rows(slice(s, s + rows_per_mb)).to(device) for s in starts]
    old_logp: list[torch.Tensor | None] = [None]
    entropy: list[torch.Tensor | None] = [None]
    ref_logp: list[torch.Tensor] = []
    with torch.no_grad():
        # θ_old is the policy before this step's first update, for every mini-batch. The first
        # mini-batch is trained before any update, so its θ_old values come from its own
        # training forward (detached): one forward pass saved, as on-policy trainers do.
        for i, mb in enumerate(minibatches):
            if i > 0:
                lp, ent = _logprobs(policy, mb, with_entropy=True)
                old_logp.append(lp)
                entropy.append(ent)
            if reference is not None:
                ref_logp.append(_logprobs(reference, mb, with_entropy=False)[0])

    sums: dict[str, float] = defaultdict(float)
    entropy_sum = entropy_tokens = 0.0
    n_mb = 0
    for i, (start, mb) in enumerate(zip(starts, minibatches, strict=True)):
        resp = mb.response_mask
        if i == 0:
            logp, ent = _logprobs(policy, mb, with_entropy=True)
            ent = ent.detach()
            old = logp.detach()
        else:
            logp, _ = _logprobs(policy, mb, with_entropy=False)
            ent, old = entropy[i], old_logp[i]
        entropy_sum += float(torch.where(resp, ent, torch.zeros_like(ent)).sum())
        entropy_tokens += float(resp.sum())
        # Forking tokens: the gradient flows only through each response's highest-entropy
        # tokens (under θ_old); the KL still covers every response token.
        update_mask = top_entropy_mask(ent, resp, cfg.top_entropy_q) if cfg.top_entropy_q < 1.0 else resp
        adv = train.advantages[start : start + rows_per_mb].to(device)

        out = clipped_policy_loss(logp, old, adv, update_mask, cfg.eps_low, eps_high, cfg.loss_agg)
        loss = out.loss
        if reference is not None:
            kl = masked_mean(kl_penalty(logp, ref_logp[i], cfg.kl_kind), resp)
            loss = loss + cfg.kl_coef * kl
            sums["kl"] += float(kl.detach())
            if i == 0:
                # Before any update of this step: the policy's distance from its anchor. 0 right
                # after a reference reset; a resume must find the same value as before the stop.
                sums["kl_start"] = float(kl.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sums["grad_norm"] += clip_grad_norm(policy, cfg.optimizer.grad_clip)
        optimizer.step()
        scheduler.step()
        sums["loss"] += float(loss.detach())
        sums["policy_loss"] += float(out.loss.detach())
        sums["clip_frac"] += float(out.clip_frac)
        sums["clip_frac_low"] += float(out.clip_frac_low)
        sums["clip_frac_high"] += float(out.clip_frac_high)
        sums["ratio_mean"] += float(out.ratio_mean)
        sums["update_token_frac"] += float(update_mask.sum()) / max(float(resp.sum()), 1.0)
        n_mb += 1
    metrics = {k: (v if k == "kl_start" else v / n_mb) for k, v in sums.items()}
    metrics["entropy"] = entropy_sum / max(entropy_tokens, 1.0)
    metrics["updates"] = float(n_mb)
    metrics["lr"] = float(scheduler.get_last_lr()[0])
    metrics["adv_abs_mean"] = float(train.advantages.abs().mean())
    return metrics


def validate(
    backend: RolloutBackend,
    entries: list[dict],
    prompt_ids: Callable[[dict], list[int]],
    tokenizer: Any,
    cfg: ProRLConfig,
    phase: ProRLPhase,
    seed: int,
) -> dict[str, float]:
    """pass@1 (mean binary correctness over ``val_samples`` samples) on held-out prompts.

    The sampling seed is the same at every evaluation, so two points of the curve differ by
    the model, not by sampling noise.
    """
    if not entries:
        return {}
    rollouts = backend.generate(
        [prompt_ids(e) for e in entries],
        n=cfg.val_samples,
        max_new_tokens=phase.max_response_tokens,
        temperature=cfg.val_temperature,
        top_p=cfg.top_p,
        seed=derive_seed(seed, "validation"),
    )
    by_family: dict[str, list[float]] = defaultdict(list)
    lengths: list[int] = []
    for entry, rs in zip(entries, rollouts, strict=True):
        grp = score_group(entry, rs, tokenizer, cfg, phase.max_response_tokens)
        by_family[entry["family"]] += [float(c) for c in grp.correct]
        lengths += [len(r.completion_ids) for r in rs]
    every = [c for cs in by_family.values() for c in cs]
    out = {"val/pass_at_1": sum(every) / len(every), "val/response_length": sum(lengths) / len(lengths)}
    out.update({f"val/pass_at_1/{fam}": sum(cs) / len(cs) for fam, cs in sorted(by_family.items())})
    return out
