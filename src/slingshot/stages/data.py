"""Data stage: task splits, teacher reasoning traces, general text, tokenizer and Megatron
indexed corpora for the whole recipe (one node, shared by every variant), and the ProRL
prompt sets of every variant, validated first (a bad row fails here, naming file and line).

It is short and deterministic, so it has no checkpoints: a rerun rebuilds the same
files (same digests).
"""

from __future__ import annotations

from slingshot.context import StageContext, StageResult
from slingshot.data.build import build_tiny_corpora
from slingshot.data.prompt_sets import convert_prompt_sets


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.pipeline.data
    converted = convert_prompt_sets(ctx.pipeline, ctx.output_dir)  # cheap: before the long build
    built = build_tiny_corpora(cfg, ctx.output_dir)
    if converted:
        built["prompt_sets"] = {name: stats.model_dump() for name, stats in converted.items()}

    # The digests were computed while building: no file is hashed twice.
    for split, stats in built["tasks"].items():
        ctx.log_file_input(f"tasks-{split}", stats["path"], context=split, digest=stats["sha256"])
    for name, stats in built["corpora"].items():
        ctx.log_file_input(f"corpus-{name}", stats["path"], digest=stats["sha256"])
    for spec in cfg.extra_corpora:
        ctx.log_file_input(f"corpus-{spec.name}", spec.path, digest=built["indexed"][spec.name]["bin_sha256"])
    metrics = {f"tokens_{name}": float(n) for name, n in built["tokens"].items()}
    metrics.update({f"tasks_{split}": float(s["records"]) for split, s in built["tasks"].items()})
    for name, stats in converted.items():
        ctx.log_file_input(f"prompt-set-{name}", stats.path, context="training", digest=stats.sha256)
        metrics[f"prompts_{name}"] = float(stats.records)
    metrics["vocab_size"] = float(built["tokenizer"]["vocab_size"])
    ctx.tracker.log_metrics(metrics, step=0)

    outputs = {
        "tokenizer_dir": built["tokenizer"]["path"],
        **{f"tasks_{split}": s["path"] for split, s in built["tasks"].items()},
        **{f"corpus_{name}": s["path"] for name, s in built["corpora"].items()},
        **{f"indexed_{name}": s["prefix"] for name, s in built["indexed"].items()},
        **{f"prompt_set_{name}": stats.path for name, stats in converted.items()},
    }
    return StageResult(
        outputs=outputs, metrics=metrics, tokens=sum(built["tokens"].values()), extra={"data": built}
    )
