"""Which metric says how a stage is doing: shared by `slingshot status` and the report's curves."""

from __future__ import annotations

# The metric that says how a stage is doing, by kind, in order of preference. A stage that
# logs none of them shows "loss" if it has it, else its first metric (entrypoints can be
# replaced, so the names are not guaranteed).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "data": ("vocab_size",),
    "pretrain": ("loss", "lm_loss"),
    "rlp": ("reward_mean", "reward", "loss"),
    "synth": ("gvendi", "dataset_size", "size"),
    "sft": ("loss",),
    "prorl": ("reward_mean", "val_pass_rate", "pass_rate"),
    "evaluate": ("pass_at_1",),
    "report": (),
}


def pick_metric(kind: str, available: list[str]) -> str | None:
    for name in (*KEY_METRICS.get(kind, ()), "loss"):
        if name in available:
            return name
    return sorted(available)[0] if available else None
