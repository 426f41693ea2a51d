"""ProRL's group sampler (SPEC §5): prompts in, scored response groups and train batches out.

A *group* is one prompt's ``n_samples`` responses with their rewards. Each step draws
prompts from a seeded, resumable :class:`PromptStream`, generates and scores groups
until ``batch_prompts`` of them carry a learning signal (rewards not all equal: DAPO's
dynamic sampling) and turns the kept groups into one :class:`TrainBatch`. Validation
(pass@1 on held-out prompts, a round robin over families) uses the same scoring. The
bookkeeping of reference resets (best validation score, plateau, π_ref ← π_θ) and the
entropy controller built from the config live here too, so the stage only calls them.

With several ranks every rank draws the same global prompts, generates and scores its
contiguous share of them (whole groups), and the scored groups are gathered back into the
global order: dynamic sampling then decides on the global list, identically on every rank
(when the batch is full, how many generation batches ran), and every statistic is the
global one. Each prompt's samples are seeded by (step, generation batch, its index in the
batch), never by rank, so N ranks draw exactly the samples one process does.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from slingshot import dist
from slingshot.algorithms.entropy import EntropyController
from slingshot.algorithms.grpo import (
    dynamic_sampling_mask,
    grpo_advantages,
    reinforce_pp_baseline_advantages,
)
from slingshot.config import ProRLConfig
from slingshot.data.chat import prompt_token_ids
from slingshot.data.tasks import derive_seed
from slingshot.data.teacher import task_prompt
from slingshot.rewards.extract import THINK_TAGS, extract
from slingshot.rewards.verifiers import reward
from slingshot.rewards.verify import CORRECT_THRESHOLD
from slingshot.rollout import Rollout, RolloutBackend
from slingshot.train.rl_batch import RLBatch, build_rl_batch
from slingshot.train.state import Counter

# --------------------------------------------------------------------------- prompts


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


TASKS_SOURCE = "tasks"  # the source name of the reasoning-gym training tasks in a mix


class MixedPromptStream:
    """Prompts from several sources (the reasoning-gym tasks, user prompt sets) by weight.

    Each draw picks a source with probability proportional to its weight (from a generator
    seeded by (seed, draw number), so a resume continues the same sequence), then takes
    that source's next prompt from its own :class:`PromptStream`. Sources of weight 0 are
    left out.
    """

    def __init__(self, sources: Sequence[tuple[str, Sequence[dict], float]], seed: int):
        kept = [(name, entries, weight) for name, entries, weight in sources if weight > 0]
        if not kept:
            raise ValueError("no training prompts: every prompt source has weight 0")
        self.names = [name for name, _, _ in kept]
        self.weights = [weight for _, _, weight in kept]
        # The tasks keep the seed a tasks-only run uses; each set gets its own.
        self.streams = {
            name: PromptStream(
                entries, seed if name == TASKS_SOURCE else derive_seed(seed, "prorl-set", name)
            )
            for name, entries, _ in kept
        }
        self.seed = seed
        self.draws = 0

    def take(self, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            rng = random.Random(derive_seed(self.seed, "prorl-mix", self.draws))
            name = rng.choices(self.names, weights=self.weights)[0]
            out += self.streams[name].take(1)
            self.draws += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "streams": {k: s.state_dict() for k, s in self.streams.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state["streams"]) != sorted(self.streams):
            raise ValueError(
                f"checkpoint drew prompts from {sorted(state['streams'])}, this run from {sorted(self.streams)}"
            )
        self.draws = int(state["draws"])
        for name, stream in self.streams.items():
            stream.load_state_dict(state["streams"][name])


def prompt_stream(
    cfg: ProRLConfig, tasks: Sequence[dict], sets: dict[str, list[dict]], seed: int
) -> PromptStream | MixedPromptStream:
    """The tasks alone (no ``datasets``: as before prompt sets existed) or the weighted mix."""
    if not cfg.datasets:
        return PromptStream(tasks, seed)
    sources = [(TASKS_SOURCE, tasks, cfg.task_weight)] + [
        (d.name, sets[d.name], d.weight) for d in cfg.datasets
    ]
    return MixedPromptStream(sources, seed)


def source_of(entry: dict) -> str:
    """The prompt source an entry was drawn from: its prompt set, or the tasks."""
    return entry["family"] if "verifier" in entry else TASKS_SOURCE


def validation_prompts(entries: list[dict], n: int) -> list[dict]:
    """The first ``n`` of a round robin over families (each family's entries in id order):
    validation covers every family, not only the one whose ids sort first."""
    by_family: dict[str, list[dict]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: e["id"]):
        by_family[entry["family"]].append(entry)
    columns = [by_family[family] for family in sorted(by_family)]
    interleaved = [e for row in itertools.zip_longest(*columns) for e in row if e is not None]
    return interleaved[:n]


def cached_prompt_ids(tokenizer: Any) -> Callable[[dict], list[int]]:
    """``entry -> chat-templated prompt ids``, each entry tokenized once per run."""
    cache: dict[str, list[int]] = {}

    def prompt_ids(entry: dict) -> list[int]:
        key = entry["id"]
        if key not in cache:
            cache[key] = prompt_token_ids(tokenizer, task_prompt(entry))
        return cache[key]

    return prompt_ids


# --------------------------------------------------------------------------- scoring


def overlong_penalty(length: int, max_tokens: int, ramp: int) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_tokens - ramp``, then linearly down
    to −1 at ``max_tokens`` (and −1 beyond). ``ramp = 0`` disables it."""
    if ramp <= 0:
        return 0.0
    start = max_tokens - ramp
    if length <= start:
        return 0.0
    return -min((length - start) / ramp, 1.0)


@dataclass
class ScoredGroup:
    """One prompt's ``n`` responses with their rewards."""

    entry: dict
    rollouts: list[Rollout]
    rewards: list[float]  # training reward (verifier score + overlong penalty)
    correct: list[bool]  # binary verifier verdict (for pass rate)
    answers: list[str | None] = field(default_factory=list)  # extracted final answers (None: none)

    @property
    def distinct_answers(self) -> int:
        """How many different final answers the group gave: its diversity, which token
        entropy can hide (a model can stay uncertain per token yet converge on one answer)."""
        return len({answer for answer in self.answers if answer is not None})


def _completion_text(tokenizer: Any, rollout: Rollout) -> str:
    # Keep special tokens: </think> is one, and the extractor looks for it. The stop token
    # that ended a finished response is no part of its text.
    ids = rollout.completion_ids[:-1] if rollout.finished else rollout.completion_ids
    return tokenizer.decode(list(ids), skip_special_tokens=False)


def score_group(
    entry: dict,
    rollouts: Sequence[Rollout],
    tokenizer: Any,
    cfg: ProRLConfig,
    max_tokens: int,
    think_tags: tuple[str, str] = THINK_TAGS,
) -> ScoredGroup:
    rewards, correct, answers = [], [], []
    for r in rollouts:
        # A response cut off by the length limit has no final answer: reward 0 by definition,
        # even if a boxed value happened to be written before the cut.
        text = _completion_text(tokenizer, r) if r.finished else None
        raw = reward(entry, text, think_tags) if text is not None else 0.0
        answers.append(extract(text, think_tags).answer if text is not None else None)
        ok = raw >= CORRECT_THRESHOLD
        value = (1.0 if ok else 0.0) if cfg.binary_reward else raw
        rewards.append(
            value + overlong_penalty(len(r.completion_ids), max_tokens, cfg.overlong_penalty_tokens)
        )
        correct.append(ok)
    return ScoredGroup(entry, list(rollouts), rewards, correct, answers)


# --------------------------------------------------------------------------- the sampler


@dataclass
class TrainBatch:
    """What one policy update consumes: kept groups only, flattened group-major."""

    groups: list[ScoredGroup]
    rewards: torch.Tensor  # [B, G]
    advantages: torch.Tensor  # [B * G]
    batch: RLBatch


def rank_groups(groups: list[ScoredGroup], cfg: ProRLConfig) -> list[ScoredGroup]:
    """This rank's share of the step's kept groups: its contiguous part of every mini-batch
    of ``mini_batch_prompts`` groups (all of them in one process)."""
    world = dist.world_size()
    return [groups[i] for i in dist.minibatch_shard(len(groups), cfg.mini_batch_prompts, dist.rank(), world)]


def make_train_batch(groups: list[ScoredGroup], cfg: ProRLConfig, pad_token_id: int) -> TrainBatch:
    """The kept groups as one batch; one-step-async runs carry the engine's log-probs, the
    behaviour policy of the importance ratio."""
    rewards = torch.tensor([grp.rewards for grp in groups], dtype=torch.float32)
    if cfg.advantage_estimator == "reinforce_pp_baseline":
        adv = reinforce_pp_baseline_advantages(rewards, eps=cfg.adv_eps).reshape(-1)
    else:
        adv = grpo_advantages(rewards, normalize_std=cfg.normalize_std, eps=cfg.adv_eps).reshape(-1)
    rollouts = [r for grp in groups for r in grp.rollouts]
    behaviour = None
    if cfg.rollout.async_steps:
        if any(r.logprobs is None for r in rollouts):
            raise ValueError("rollout.async_steps: the rollout backend returned no log-probs")
        behaviour = [r.logprobs for r in rollouts]
    batch = build_rl_batch([(r.prompt_ids, r.completion_ids) for r in rollouts], pad_token_id, behaviour)
    return TrainBatch(groups, rewards, adv, batch)


class GroupSampler:
    """Generates and scores groups for one length-schedule phase of a ProRL run.

    Every generation call is seeded from (``seed``, what it is for), so a resumed step and
    every validation point draw the same samples as an uninterrupted run would.
    """

    def __init__(
        self,
        backend: RolloutBackend,
        tokenizer: Any,
        cfg: ProRLConfig,
        max_response_tokens: int,
        seed: int,
        think_tags: tuple[str, str] = THINK_TAGS,
    ):
        self.think_tags = think_tags
        self.backend = backend
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.max_tokens = max_response_tokens
        self.seed = seed
        self.prompt_ids = cached_prompt_ids(tokenizer)

    def _generate(
        self, entries: list[dict], n: int, temperature: float, seeds: list[int]
    ) -> list[list[Rollout]]:
        return self.backend.generate(
            [self.prompt_ids(e) for e in entries],
            n=n,
            max_new_tokens=self.max_tokens,
            temperature=temperature,
            top_p=self.cfg.top_p,
            seed=seeds,
        )

    def _score(self, entry: dict, rollouts: list[Rollout]) -> ScoredGroup:
        return score_group(entry, rollouts, self.tokenizer, self.cfg, self.max_tokens, self.think_tags)

    def _sharded_groups(
        self, entries: list[dict], n: int, temperature: float, seeds: list[int]
    ) -> tuple[list[ScoredGroup], float, float]:
        """This rank generates and scores its share of ``entries`` (one seed per prompt); the
        scored groups of every rank, in the global order, and this rank's generate/score seconds."""
        start, stop = dist.shard_bounds(len(entries), dist.rank(), dist.world_size())
        started = time.perf_counter()
        rollouts = self._generate(entries[start:stop], n, temperature, seeds[start:stop])
        generated = time.perf_counter()
        mine = [self._score(e, rs) for e, rs in zip(entries[start:stop], rollouts, strict=True)]
        scored = time.perf_counter()
        return dist.all_gather_flat(mine), generated - started, scored - generated

    def collect(
        self, stream: PromptStream | MixedPromptStream, step: int
    ) -> tuple[list[ScoredGroup], dict[str, float]]:
        """Generate and score until ``batch_prompts`` groups with a learning signal are kept
        (``ceil(over_provision x batch_prompts)`` prompts per generation batch)."""
        cfg = self.cfg
        kept: list[ScoredGroup] = []
        seen: list[ScoredGroup] = []
        gen_batches = tokens = informative = 0
        generate_s = score_s = 0.0
        # Over-provisioning draws more prompts than the batch needs; the surplus kept groups are dropped.
        prompts_per_gen = math.ceil(cfg.over_provision * cfg.batch_prompts)
        for g in range(cfg.max_gen_batches):
            entries = stream.take(prompts_per_gen)  # the same global prompts on every rank
            seeds = [derive_seed(self.seed, "rollout", step, g, i) for i in range(len(entries))]
            groups, gen_s, sc_s = self._sharded_groups(entries, cfg.n_samples, cfg.temperature, seeds)
            generate_s += gen_s
            score_s += sc_s
            gen_batches += 1
            tokens += sum(len(r.prompt_ids) + len(r.completion_ids) for grp in groups for r in grp.rollouts)
            seen += groups
            keep = dynamic_sampling_mask(torch.tensor([grp.rewards for grp in groups], dtype=torch.float64))
            kept += [grp for grp, k in zip(groups, keep.tolist(), strict=True) if k]
            informative += int(keep.sum())
            if len(kept) >= cfg.batch_prompts:
                break
        kept = kept[: cfg.batch_prompts]
        # A short batch (max_gen_batches ran out) trains on a multiple of the world size, so
        # that every mini-batch splits evenly over the ranks (one process keeps them all).
        kept = kept[: len(kept) - len(kept) % dist.world_size()]
        flat = [r for grp in seen for r in grp.rollouts]
        lengths = torch.tensor([len(r.completion_ids) for r in flat], dtype=torch.float64)
        stats = {
            "reward_mean": sum(sum(grp.rewards) for grp in seen) / len(flat),
            "pass_rate": sum(sum(grp.correct) for grp in seen) / len(flat),
            "groups_kept_frac": informative / len(seen),
            "groups_trained": float(len(kept)),
            # Mean over the kept groups (0 with none): falls as answer diversity collapses.
            "distinct_answers": sum(grp.distinct_answers for grp in kept) / max(len(kept), 1),
            "gen_batches": float(gen_batches),
            "response_length": float(lengths.mean()),
            "response_length_max": float(lengths.max()),
            "truncated_frac": sum(not r.finished for r in flat) / len(flat),
            "tokens_generated": float(tokens),
            # The weights the rollouts were sampled with (pushes before them).
            "weight_version": sum(r.weight_version for r in flat) / len(flat),
            "time_generate_s": generate_s,
            "time_score_s": score_s,
        }
        if cfg.datasets:
            stats.update(per_source_stats(seen))
        return kept, stats

    def validate(self, entries: list[dict]) -> dict[str, float]:
        """pass@1 (mean binary correctness over ``val_samples`` samples) on held-out prompts.

        The sampling seed is the same at every evaluation, so two points of the curve differ by
        the model, not by sampling noise.
        """
        if not entries:
            return {}
        cfg = self.cfg
        # Sharded like training: each rank scores its share, pass@1 is over the gathered groups.
        seeds = [derive_seed(self.seed, "validation", i) for i in range(len(entries))]
        groups, _, _ = self._sharded_groups(entries, cfg.val_samples, cfg.val_temperature, seeds)
        by_family: dict[str, list[float]] = defaultdict(list)
        lengths: list[int] = []
        for grp in groups:
            by_family[grp.entry["family"]] += [float(c) for c in grp.correct]
            lengths += [len(r.completion_ids) for r in grp.rollouts]
        every = [c for cs in by_family.values() for c in cs]
        out = {"val/pass_at_1": sum(every) / len(every), "val/response_length": sum(lengths) / len(lengths)}
        out.update({f"val/pass_at_1/{fam}": sum(cs) / len(cs) for fam, cs in sorted(by_family.items())})
        return out


class CollectAhead:
    """One-step-async sampling (``rollout.async_steps: 1``): step t+1's groups are collected in
    a thread while the trainer updates on step t's (the engine generates in its own process,
    with the weights from before step t's update: one version behind when they are trained on).

    The batch collected ahead is part of the checkpoint, so a resumed run trains on exactly
    the groups the uninterrupted run would have; the prompt stream's saved position is past them.
    """

    def __init__(self, sampler: GroupSampler, stream: PromptStream | MixedPromptStream):
        self.sampler, self.stream = sampler, stream
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")
        self._running: tuple[int, Future] | None = None
        self._ready: tuple[int, list[ScoredGroup], dict[str, float]] | None = None

    def start(self, step: int) -> None:
        """Begin collecting ``step``'s groups with the engine's current weights."""
        assert self._running is None and self._ready is None, "one batch ahead at most"
        self._running = (step, self._pool.submit(self.sampler.collect, self.stream, step))

    def wait(self) -> None:
        """Until the batch collected ahead is in: before a weight push, so it keeps its weights."""
        if self._running is not None:
            step, future = self._running
            self._running = None
            self._ready = (step, *future.result())

    def take(self, step: int) -> tuple[list[ScoredGroup], dict[str, float]]:
        """``step``'s groups: the batch collected ahead, or collected now (a run's first step)."""
        self.wait()
        if self._ready is None:
            return self.sampler.collect(self.stream, step)
        ahead, groups, stats = self._ready
        if ahead != step:
            raise RuntimeError(f"the batch collected ahead is step {ahead}'s, not step {step}'s")
        self._ready = None
        return groups, stats

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def state_dict(self) -> dict[str, Any]:
        self.wait()
        if self._ready is None:
            return {"step": None}
        step, groups, stats = self._ready
        return {"step": step, "groups": [asdict(g) for g in groups], "stats": stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["step"] is None:
            self._ready = None
            return
        groups = [
            ScoredGroup(
                entry=g["entry"],
                rollouts=[Rollout(**r) for r in g["rollouts"]],
                rewards=g["rewards"],
                correct=g["correct"],
                answers=g.get("answers", []),
            )
            for g in state["groups"]
        ]
        self._ready = (int(state["step"]), groups, dict(state["stats"]))


def per_source_stats(groups: Sequence[ScoredGroup]) -> dict[str, float]:
    """``reward/<source>``, ``pass_rate/<source>`` and ``samples/<source>`` of one step's groups."""
    by_source: dict[str, list[ScoredGroup]] = defaultdict(list)
    for grp in groups:
        by_source[source_of(grp.entry)].append(grp)
    out: dict[str, float] = {}
    for name, grps in sorted(by_source.items()):
        n = sum(len(grp.rewards) for grp in grps)
        out[f"reward/{name}"] = sum(sum(grp.rewards) for grp in grps) / n
        out[f"pass_rate/{name}"] = sum(sum(grp.correct) for grp in grps) / n
        out[f"samples/{name}"] = float(n)
    return out


# --------------------------------------------------------------------------- controller and resets


def entropy_controller(cfg: ProRLConfig) -> EntropyController:
    """The ε_high controller of ``cfg.entropy_control``; disabled, it pins ε_high at ``cfg.eps_high``."""
    ec = cfg.entropy_control
    return EntropyController(
        target_low=ec.target_low,
        target_high=ec.target_high,
        eps_high_min=ec.eps_high_min if ec.enabled else cfg.eps_high,
        eps_high_max=ec.eps_high_max if ec.enabled else cfg.eps_high,
        step_size=ec.step_size,
        eps_high=cfg.eps_high,
        relative=ec.relative,
    )


def fresh_book() -> Counter:
    """A fresh run's reset bookkeeping, validation history, token count and steps without a
    learning signal (checkpointed)."""
    return Counter(
        best_val=float("-inf"),
        evals_since_best=0,
        resets=0,
        last_reset_step=0,
        tokens=0,
        no_signal_steps=0,
        no_signal_streak=0,
    )


class NoLearningSignalWarning(RuntimeWarning):
    """ProRL steps in a row trained on nothing: dynamic sampling dropped every group."""


class NoLearningSignal(RuntimeError):
    """``no_signal_max_steps`` steps in a row without a trained group: the stage fails."""


def no_signal_message(streak: int, pass_rate: float, n_samples: int) -> str:
    """What a run without a learning signal must say: how long, why, and what to change."""
    why = (
        "every response was wrong"
        if pass_rate == 0.0
        else "every response was right"
        if pass_rate == 1.0
        else "each prompt's responses were all right or all wrong"
    )
    return (
        f"prorl: NO LEARNING SIGNAL for {streak} consecutive steps: groups_trained=0, {why} "
        f"(pass_rate {pass_rate:.3g} over {n_samples} samples per prompt), so dynamic sampling "
        "dropped every group and the policy was not updated; the output model will equal the "
        "input. Fixes: easier prompts (prorl.tasks, datasets), more samples or generation "
        "batches per step (n_samples, max_gen_batches, over_provision), or a stronger starting "
        "model (more SFT)."
    )


def track_signal(book: Counter, groups_trained: int, pass_rate: float, cfg: ProRLConfig) -> None:
    """Count a step without a trained group; warn after ``no_signal_warn_steps`` in a row and
    raise :class:`NoLearningSignal` after ``no_signal_max_steps`` in a row."""
    values = book.values  # checkpoints from before these counters lack them
    if groups_trained:
        values["no_signal_streak"] = 0
        return
    values["no_signal_steps"] = values.get("no_signal_steps", 0) + 1
    streak = values["no_signal_streak"] = values.get("no_signal_streak", 0) + 1
    limit = cfg.no_signal_max_steps
    if limit is not None and streak >= limit:
        raise NoLearningSignal(no_signal_message(streak, pass_rate, cfg.n_samples))
    if streak == cfg.no_signal_warn_steps:
        message = no_signal_message(streak, pass_rate, cfg.n_samples)
        print(f"\n{'!' * 80}\nWARNING {message}\n{'!' * 80}\n", file=sys.stderr, flush=True)
        warnings.warn(message, NoLearningSignalWarning, stacklevel=2)


def track_validation(book: Counter, value: float) -> bool:
    """Record one validation score; True when it did not improve on the best so far."""
    if value > book["best_val"]:
        book["best_val"] = value
        book["evals_since_best"] = 0
        return False
    book["evals_since_best"] += 1
    return True


def plateaued(cfg: ProRLConfig, book: Counter) -> bool:
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
