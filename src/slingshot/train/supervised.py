"""The supervised (token-level cross-entropy) training loop shared by stages that fine-tune
an HF causal LM on tokenized examples with response-only labels (SFT; any stage that
needs plain next-token training on prompt/response pairs).

    trainer = SupervisedTrainer(model, train_examples, settings, ctx.dist, pad_id, eval_examples)
    metrics = trainer.fit(ctx)                 # resumable; checkpoints through slingshot.loop
    export = trainer.export_model()            # full model on rank 0 (None elsewhere)

What it guarantees:
- Data order: epoch ``e`` is a seeded permutation of the examples (``numpy`` PCG64 seeded
  with ``[seed, e]``), packed first-fit into rows, cut into global batches of
  ``global_batch_size`` rows (a config value; each rank accumulates
  ``global_batch_size / (micro_batch_size * world_size)`` micro-batches). Global batch
  ``k`` is a pure function of (examples, settings, k), so a resumed run sees exactly the
  batches an uninterrupted run would, and every world size sees the same global batches
  (a checkpoint written on 2 ranks resumes on 1 with the same schedule).
- Loss: the sum of token losses over the global batch divided by its number of
  supervised tokens, whatever the split over ranks and micro-batches: 1 process with
  2 micro-batches and 2 processes with 1 each take the same step.
- Packing: position ids restart at every example and attention never crosses an example
  boundary (a block-diagonal 4-D mask for eager/sdpa; position-id varlen detection for
  flash attention); a model that does not honour either falls back to one example per
  row (checked once, numerically, by :func:`packing_supported`).
- Data parallel: FSDP2 (``fully_shard``) on GPUs; gradient all-reduce on gloo (CPU
  tests; ``data_parallel: fsdp`` shards over gloo too); nothing for one process. Every
  collective goes through :mod:`slingshot.dist`.
- Checkpoints: :class:`slingshot.train.state.TrainState` (DCP), written by every rank;
  each rank writes its own FSDP2 shards, and a resume at another world size reshards.
- Metrics (the project's naming rule): training step metrics unprefixed (``loss``,
  ``grad_norm``, ``lr``, ``epoch``, ``rows``, ``tokens``, ``tokens_per_s``), the held-out
  loss as ``val/loss`` and ``val/tokens``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from slingshot import dist as collectives
from slingshot.config import OptimizerConfig, SFTConfig, sft_grad_accum
from slingshot.data.packing import IGNORE_INDEX, PackedSFT, SFTExample, block_causal_mask
from slingshot.dist import DistEnv
from slingshot.models.sharding import ParallelMode, full_model, resolve_parallel, shard_model
from slingshot.train.logging import StepLogger
from slingshot.train.optim import build_optimizer, build_scheduler
from slingshot.train.state import Counter, ModelOptimizerState, TrainState

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from slingshot.context import StageContext


@dataclass(frozen=True)
class SupervisedSettings:
    seq_length: int
    micro_batch_size: int  # rows per forward pass on one rank
    global_batch_size: int  # rows per optimizer step over all ranks (the data schedule's unit)
    epochs: float  # a fractional last epoch takes the first part of that epoch's batches
    optimizer: OptimizerConfig
    packing: bool = True
    eval_every: int = 50
    log_every: int = 10
    seed: int = 0
    data_parallel: ParallelMode = "auto"
    lookback: int = 64  # open rows searched by first-fit packing
    bf16: bool = True  # bf16 compute on GPUs (FSDP param dtype, else autocast); CPU runs fp32

    @classmethod
    def from_config(cls, cfg: SFTConfig, seed: int) -> SupervisedSettings:
        """The loop's settings of an SFT stage config; ``seed`` is the pipeline's."""
        return cls(
            seq_length=cfg.seq_length,
            micro_batch_size=cfg.micro_batch_size,
            global_batch_size=cfg.global_batch_size,
            epochs=cfg.epochs,
            optimizer=cfg.optimizer,
            packing=cfg.packing,
            eval_every=cfg.eval_every,
            log_every=cfg.log_every,
            seed=seed,
            data_parallel=cfg.data_parallel,
            bf16=cfg.memory.bf16,
        )

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches each rank runs per optimizer step at ``world_size`` ranks."""
        return sft_grad_accum(self.global_batch_size, self.micro_batch_size, world_size)


# --------------------------------------------------------------------------- data order


def plan_rows(
    lengths: Sequence[int], order: Sequence[int], seq_len: int, packing: bool, lookback: int = 64
) -> list[list[int]]:
    """Example indices of each row, taking examples in ``order``.

    Packing is first-fit over the last ``lookback`` open rows, the same placement as
    :func:`slingshot.data.packing.pack_sft`, but on lengths only: a whole epoch is
    planned without materialising token rows (only the current batch is built).
    """
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = lengths[i]
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens > seq_length {seq_len}")
        if packing:
            first = max(0, len(rows) - lookback)
            for r in range(first, len(rows)):
                if used[r] + n <= seq_len:
                    rows[r].append(i)
                    used[r] += n
                    break
            else:
                rows.append([i])
                used.append(n)
        else:
            rows.append([i])
            used.append(n)
    return rows


def supervised_targets(example: SFTExample) -> int:
    """Tokens of ``example`` that carry loss after the causal shift (never its first token)."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


class EpochSchedule:
    """Global batch ``k`` (1-based) as lists of example indices per row, from a seeded order."""

    def __init__(self, lengths: Sequence[int], settings: SupervisedSettings):
        if not lengths:
            raise ValueError("no training examples")
        self.lengths = list(lengths)
        self.settings = settings
        self.global_rows = settings.global_batch_size  # not the world size: a resume may change it
        full = math.floor(settings.epochs)
        self.steps_per_epoch: list[int] = []
        for epoch in range(math.ceil(settings.epochs)):
            n = math.ceil(len(self.epoch_rows(epoch)) / self.global_rows)
            if epoch >= full:  # the fractional tail of the last epoch
                n = max(1, round(n * (settings.epochs - full)))
            self.steps_per_epoch.append(n)
        self._cached: tuple[int, list[list[int]]] | None = None

    @property
    def total_steps(self) -> int:
        return sum(self.steps_per_epoch)

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.settings.seed, epoch]).permutation(len(self.lengths))

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        s = self.settings
        return plan_rows(self.lengths, self.order(epoch).tolist(), s.seq_length, s.packing, s.lookback)

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of global batch ``step``."""
        k = step - 1
        for epoch, n in enumerate(self.steps_per_epoch):
            if k < n:
                return epoch, k
            k -= n
        raise IndexError(f"step {step} is past the schedule's {self.total_steps} steps")

    def batch(self, step: int) -> list[list[int]]:
        epoch, k = self.locate(step)
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.epoch_rows(epoch))
        rows = self._cached[1]
        return rows[k * self.global_rows : (k + 1) * self.global_rows]


def shard_micro_batches(
    rows: Sequence[Any], rank: int, world_size: int, micro_batch_size: int, n_micro: int | None = None
) -> list[list[Any]]:
    """This rank's contiguous share of ``rows``, cut into micro-batches.

    Every rank gets the same number of micro-batches (``n_micro``, or enough for the
    largest share) so collective forward passes (FSDP) stay in step; a rank short of
    rows gets empty micro-batches, which the loop runs as a zero-weight dummy row.
    """
    per_rank = math.ceil(len(rows) / world_size)
    mine = list(rows[rank * per_rank : (rank + 1) * per_rank])
    n = n_micro if n_micro is not None else max(1, math.ceil(per_rank / micro_batch_size))
    return [mine[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(n)]


# --------------------------------------------------------------------------- tensors


MaskKind = Literal["position_ids", "bool", "additive"]


def attention_layout(model: torch.nn.Module) -> MaskKind:
    """How a packed row's example boundaries reach this model's attention.

    eager adds its mask to the scores (an additive float mask); sdpa takes a boolean
    mask (True = attend) in any compute dtype; flash and flex kernels get the boundaries
    from position ids (transformers detects the resets and uses varlen / a BlockMask).
    """
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl == "eager":
        return "additive"
    if impl == "sdpa":
        return "bool"
    return "position_ids"


def collate(
    examples: Sequence[Sequence[SFTExample]],
    pad_id: int,
    seq_len: int | None,
    layout: MaskKind,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Model inputs for rows of examples: ids, shifted targets and the attention inputs.

    ``seq_len=None`` pads to the longest row (the padding fallback). ``targets[t]`` is the
    label of token ``t+1``, IGNORE_INDEX where token ``t+1`` starts an example (so a
    packed row never trains on predicting one example from the end of another) and at
    the last position.
    """
    rows = []
    for group in examples:
        row = PackedSFT()
        for ex in group:
            row.add(ex)
        rows.append(row)
    width = seq_len or max(r.used for r in rows)
    for row in rows:
        row.pad_to(width, pad_id)
    input_ids = torch.tensor([r.input_ids for r in rows], dtype=torch.long)
    labels = torch.tensor([r.labels for r in rows], dtype=torch.long)
    position_ids = torch.tensor([r.position_ids for r in rows], dtype=torch.long)
    # Shift the targets, not the logits: the [B, T, V] logits are used as they are (no copy).
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    targets[:, :-1][position_ids[:, 1:] == 0] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "position_ids": position_ids, "targets": targets}
    if layout != "position_ids":
        allowed = torch.from_numpy(
            np.stack([block_causal_mask(r.cu_seqlens, width) for r in rows])
        ).unsqueeze(1)
        if layout == "bool":
            batch["attention_mask"] = allowed
        else:  # float32 min stays -inf-like when eager upcasts bf16 scores to add it
            batch["attention_mask"] = torch.zeros(allowed.shape).masked_fill_(
                ~allowed, torch.finfo(torch.float32).min
            )
    return {k: v.to(device) for k, v in batch.items()}


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the supervised targets of ``batch``, and their count."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch["position_ids"],
        use_cache=False,
    ).logits
    targets = batch["targets"]
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((targets != IGNORE_INDEX).sum())


def per_example_loss(
    model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int, seq_len: int | None, packed: bool
) -> list[float]:
    """Summed token loss of each example, computed packed in one row or one row per example."""
    layout = attention_layout(model)
    device = next(model.parameters()).device
    with torch.no_grad():
        if not packed:
            return [
                float(token_loss_sum(model, collate([[ex]], pad_id, None, layout, device))[0])
                for ex in examples
            ]
        batch = collate([list(examples)], pad_id, seq_len, layout, device)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits[0]
        token_losses = torch.nn.functional.cross_entropy(
            logits.float(), batch["targets"][0], ignore_index=IGNORE_INDEX, reduction="none"
        )
    out, start = [], 0
    for ex in examples:
        # targets[t] predicts token t+1: example tokens [start, end) own targets [start, end-1)
        end = start + len(ex.input_ids)
        out.append(float(token_losses[start : end - 1].sum()))
        start = end
    return out


def packing_supported(
    model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int, tol: float = 1e-4
) -> bool:
    """Whether the model keeps packed examples apart: per-example losses packed == alone."""
    probe = list(examples[:3])
    if len(probe) < 2:
        return True  # nothing to pack
    was_training = model.training
    model.eval()
    try:
        width = sum(len(ex.input_ids) for ex in probe)
        packed = per_example_loss(model, probe, pad_id, width, packed=True)
        alone = per_example_loss(model, probe, pad_id, None, packed=False)
    finally:
        model.train(was_training)
    return all(abs(a - b) <= tol * max(1.0, abs(b)) for a, b in zip(packed, alone, strict=True))


# --------------------------------------------------------------------------- parallelism and state


# --------------------------------------------------------------------------- the trainer


class SupervisedTrainer:
    def __init__(
        self,
        model: PreTrainedModel,
        examples: Sequence[SFTExample],
        settings: SupervisedSettings,
        dist: DistEnv,
        pad_id: int,
        eval_examples: Sequence[SFTExample] = (),
    ):
        self.settings = settings
        self.dist = dist
        self.pad_id = pad_id
        self.device = dist.device
        self.examples = list(examples)
        self.eval_examples = list(eval_examples)
        self.model_config = model.config
        self.mode = resolve_parallel(settings.data_parallel, dist)
        self.grad_accum = settings.grad_accum(dist.world_size)  # refuses an uneven split, by key
        model.to(self.device)
        # Decide packing before sharding (the probe runs the whole model on this rank).
        self.packing = settings.packing and packing_supported(model, self.examples, pad_id)
        if settings.packing and not self.packing:
            print("[slingshot] model mixes packed examples: falling back to padding", flush=True)
        self.layout = attention_layout(model)
        if self.mode == "fsdp":
            shard_model(model, self.device, settings.bf16)
        self.model = model
        self.model.train()
        self.optimizer = build_optimizer(model, settings.optimizer)
        effective = settings if self.packing == settings.packing else replace(settings, packing=False)
        self.schedule = EpochSchedule([len(ex.input_ids) for ex in self.examples], effective)
        self.scheduler = build_scheduler(self.optimizer, settings.optimizer, self.schedule.total_steps)
        self.targets = [supervised_targets(ex) for ex in self.examples]
        self.progress = Counter(step=0, tokens=0, supervised_tokens=0, last={})
        core = ModelOptimizerState(model, self.optimizer)  # sharded as it lives (DCP reshards on load)
        self.state = TrainState(dist.is_main, core=core, scheduler=self.scheduler, progress=self.progress)
        self.autocast = self.device.type == "cuda" and self.mode != "fsdp" and settings.bf16

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    # -- one step ---------------------------------------------------------------------
    def _forward(
        self, rows: list[list[int]], source: Sequence[SFTExample], scale: float
    ) -> tuple[float, int]:
        """Forward (and backward when ``scale`` is not None) one micro-batch; summed loss and count."""
        dummy = not rows
        if dummy:  # keep collectives in step: a zero-weight row
            rows = [[0]]
        groups = [[source[i] for i in row] for row in rows]
        width = self.settings.seq_length if self.packing else None
        batch = collate(groups, self.pad_id, width, self.layout, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss_sum, count = token_loss_sum(self.model, batch)
        if dummy:
            loss_sum, count = loss_sum * 0.0, 0
        if torch.is_grad_enabled():
            (loss_sum * scale).backward()
        return float(loss_sum.detach()), count

    def train_step(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        s, dist = self.settings, self.dist
        rows = self.schedule.batch(step)
        global_targets = sum(self.targets[i] for row in rows for i in row)
        tokens = sum(len(self.examples[i].input_ids) for row in rows for i in row)
        # Sum of token losses / global target count, times world size under FSDP (whose
        # reduce-scatter averages over ranks): the gradient of the global token mean.
        scale = (dist.world_size if self.mode == "fsdp" else 1) / max(global_targets, 1)
        micro = shard_micro_batches(rows, dist.rank, dist.world_size, s.micro_batch_size, self.grad_accum)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for i, mb in enumerate(micro):
            if self.mode == "fsdp":
                self.model.set_requires_gradient_sync(i == len(micro) - 1)
            loss_sum += self._forward(mb, self.examples, scale)[0]
        if self.mode == "allreduce":  # the loss is already globally normalised: sum
            collectives.all_reduce_grads(self.model, "sum")
        loss_sum = collectives.all_reduce_scalar(loss_sum)
        grad_norm = collectives.clip_grad_norm(self.model.parameters(), s.optimizer.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.progress["step"] = step
        self.progress["tokens"] += tokens
        self.progress["supervised_tokens"] += global_targets
        epoch, _ = self.schedule.locate(step)
        elapsed = time.perf_counter() - start
        metrics = {
            "loss": loss_sum / max(global_targets, 1),
            "grad_norm": grad_norm,
            "lr": lr,
            "epoch": epoch + 1,
            "rows": len(rows),
            "tokens": self.progress["tokens"],
            "tokens_per_s": tokens / elapsed,
        }
        self.progress["last"] = metrics
        return metrics

    # -- held-out loss ----------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        s, dist = self.settings, self.dist
        rows = plan_rows(
            [len(ex.input_ids) for ex in self.eval_examples],
            range(len(self.eval_examples)),
            s.seq_length,
            self.packing,
            s.lookback,
        )
        micro = shard_micro_batches(rows, dist.rank, dist.world_size, s.micro_batch_size)
        was = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for mb in micro:
                loss, n = self._forward(mb, self.eval_examples, 0.0)
                total, count = total + loss, count + n
        self.model.train(was)
        total = collectives.all_reduce_scalar(total)
        count = int(collectives.all_reduce_scalar(float(count)))
        return {"val/loss": total / max(count, 1), "val/tokens": count}

    # -- the loop ---------------------------------------------------------------------
    def fit(self, ctx: StageContext) -> dict[str, float]:
        """Run (or resume) every step; held-out loss every ``eval_every`` steps and at the end."""
        from slingshot.loop import resumable_steps

        logger = StepLogger(ctx, self.settings.log_every)
        total = self.total_steps
        for step in resumable_steps(ctx, total, self.state, all_ranks_write=True):
            metrics = self.train_step(step)
            logger.log(step, metrics, force=step in (1, total))
            if step % self.settings.eval_every == 0 and step != total:
                ctx.tracker.log_metrics(self.evaluate(), step=step)
        final = {k: float(v) for k, v in self.progress["last"].items()}
        evaluation = self.evaluate()
        ctx.tracker.log_metrics(evaluation, step=total)
        return {**final, **evaluation, "steps": float(total)}

    def export_model(self) -> PreTrainedModel | None:
        """The trained model as a plain (unsharded, CPU) HF model on rank 0; None elsewhere."""
        return full_model(self.model, self.dist.is_main)
