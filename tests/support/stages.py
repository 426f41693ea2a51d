"""Running real stages in tests without Snakemake: a StageContext built by hand, a small
data stage output, and a tiny HF model directory built from config (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from slingshot.checkpoint import CheckpointManager, SaveTriggers
from slingshot.config import PipelineConfig, deep_merge
from slingshot.context import StageContext, StageResult
from slingshot.dist import DistEnv
from slingshot.tracking import Tracker

SMALL_DATA = {
    "families": ["basic_arithmetic", "chain_sum", "gcd", "number_sorting"],
    "splits": {"train": 200, "validation": 20, "test": 40},
    "general_docs": 400,
    "tokenizer": {"vocab_size": 512, "max_train_docs": 2000},
}


# The smallest Megatron GPT the pretraining tests train (vocab of SMALL_DATA's tokenizer).
TINY_GPT: dict[str, int] = {
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 128,
    "num_attention_heads": 4,
    "num_query_groups": 2,
    "vocab_size": 512,
    "seq_length": 64,
}


def pipeline_config(tmp: Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    raw = {
        "pipeline": {"name": "unit", "results_dir": str(tmp / "results"), "work_dir": str(tmp / "work")},
        "data": SMALL_DATA,
    }
    return PipelineConfig.model_validate(deep_merge(raw, overrides or {}))


def make_ctx(
    tmp: Path,
    kind: str,
    cfg: PipelineConfig,
    upstream: dict[str, dict[str, Any]] | None = None,
    *,
    stage: str | None = None,
    variant: str = "main",
    phase: str | None = None,
    model_from: str | None = None,
    init_model: str | None = None,
    tracker: Tracker | None = None,
    dist: DistEnv | None = None,
    interval_steps: int | None = None,
) -> StageContext:
    stage = stage or kind
    section = None if kind in ("data", "report") else getattr(cfg.variant_stages(variant), kind)
    work_dir = tmp / "work" / variant / stage
    output_dir = tmp / "results" / variant / stage
    work_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    interval = interval_steps or (section.checkpoint.interval_steps if section else 1000)
    return StageContext(
        stage=stage,
        kind=kind,
        variant=variant,
        phase=phase,
        config=section,
        pipeline=cfg,
        upstream=upstream or {},
        model_from=model_from,
        init_model=init_model,
        work_dir=work_dir,
        output_dir=output_dir,
        tracker=tracker or Tracker.disabled(),
        dist=dist or DistEnv(),
        checkpoints=CheckpointManager(work_dir / "checkpoints"),
        triggers=SaveTriggers(interval_steps=interval),
    )


def as_manifest(kind: str, result: StageResult, key: str) -> dict[str, Any]:
    """What the job wrapper would write for ``result`` (the fields stages read)."""
    return {"kind": kind, "key": key, "outputs": result.outputs, "metrics": result.metrics, **result.extra}


def build_small_data(tmp: Path) -> dict[str, Any]:
    from slingshot.stages import data

    cfg = pipeline_config(tmp)
    result = data.run(make_ctx(tmp, "data", cfg, variant="", stage="data"))
    return as_manifest("data", result, "data")


def tiny_model_dir(
    out: Path, tokenizer_dir: Path, arch: str = "llama", seed: int = 0, heads: int = 4, kv_heads: int = 2
) -> Path:
    """An untrained tiny HF causal LM with the data stage's tokenizer, saved like a stage output
    (64 wide: ``heads=2, kv_heads=1`` gives the head_dim of 32 vLLM's CPU attention needs)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.hf import save_model_dir

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = (
        LlamaForCausalLM(LlamaConfig(**common))
        if arch == "llama"
        else Qwen2ForCausalLM(Qwen2Config(**common))
    )
    return save_model_dir(model, tokenizer, out)


class StopAfter(SaveTriggers):
    """Save triggers that ask the loop to stop (as USR2 would) once step ``stop_after`` is done."""

    def __init__(self, interval_steps: int, stop_after: int | None):
        super().__init__(interval_steps=interval_steps)
        self.stop_after = stop_after

    def check(self, step: int) -> tuple[bool, bool]:
        if self.stop_after is not None and step == self.stop_after:
            self.request_stop("test-stop")
        return super().check(step)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
