"""Continued pretraining from an HF checkpoint: a tiny random Qwen3 (QK-norm) saved with the
data stage's tokenizer is imported by phase 1 and trained through both FLR phases, and each
phase exports a Qwen3 directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("megatron.core")

from stages import TINY_GPT, pipeline_config  # noqa: E402
from test_pretrain import PRETRAIN, _read, _spawn  # noqa: E402

P1 = "main/pretrain-phase1"


def _tiny_qwen3(tokenizer: Any, out: Path, vocab_size: int | None = None) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # QK-norm weights off their ones init: importing them must matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _first_step_loss(
    model: torch.nn.Module, overrides: dict[str, Any], data: dict[str, Any], root: Path
) -> float:
    """The HF model's loss on phase 1's first global batch, as the stage's train step computes it."""
    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.megatron_data import PhaseData, phase_plan

    cfg = pipeline_config(root, overrides).variant_stages("main").pretrain
    tokenizer = load_tokenizer(data["outputs"]["tokenizer_dir"])
    plan = phase_plan(cfg, "phase1")
    prefixes = {n: data["outputs"][f"indexed_{n}"] for n in ("general", "reasoning")}
    phase = PhaseData.from_config(cfg, plan, tokenizer, prefixes, seed=pipeline_config(root).pipeline.seed)
    batches = phase.micro_batches(0, 0, 1, cfg.micro_batch_size, dict.fromkeys(prefixes, 0))
    losses = []
    with torch.no_grad():
        for b in batches:
            logits = model(b["tokens"]).logits
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b["labels"], reduction="none")
            mask = b["loss_mask"].float()
            losses.append(float((ce * mask).sum() / mask.sum()))
    return sum(losses) / len(losses)


def test_continued_pretraining_from_an_imported_qwen3(tmp_path: Path, small_data: dict[str, Any]) -> None:
    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.hf import load_model_and_tokenizer

    tokenizer = load_tokenizer(small_data["outputs"]["tokenizer_dir"])
    hf_dir = _tiny_qwen3(tokenizer, tmp_path / "qwen3")
    overrides = {"stages": {"pretrain": {**PRETRAIN, "init_model": str(hf_dir), "model": TINY_GPT}}}
    _spawn(
        tmp_path,
        small_data,
        [
            {"name": "p1", "dir": "run", "phase": "phase1", "init_model": str(hf_dir)},
            {
                "name": "p2",
                "dir": "run",
                "phase": "phase2",
                "upstream": {P1: str(tmp_path / "p1.json")},
                "model_from": P1,
            },
        ],
        overrides=overrides,
    )
    p1, p2 = _read(tmp_path, "p1"), _read(tmp_path, "p2")
    # Phase 1 started from the imported weights: its first loss is the HF model's on that batch.
    imported, _ = load_model_and_tokenizer(hf_dir)
    assert p1["metrics"]["1"]["loss"] == pytest.approx(
        _first_step_loss(imported.float().eval(), overrides, small_data, tmp_path), abs=1e-4
    )
    assert sorted(int(s) for s in p2["metrics"]) == list(range(7, 11))  # phase 2 continues the steps
    for record in (p1, p2):
        model, _ = load_model_and_tokenizer(record["manifest"]["outputs"]["model_dir"])
        assert type(model).__name__ == "Qwen3ForCausalLM"
        assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 2
    final, _ = load_model_and_tokenizer(p2["manifest"]["outputs"]["model_dir"])
    q_norm = "model.layers.0.self_attn.q_norm.weight"
    assert not torch.equal(final.state_dict()[q_norm], imported.state_dict()[q_norm])  # trained


def test_continued_pretraining_refuses_another_tokenizer(tmp_path: Path, small_data: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.config import GPTModelConfig
    from slingshot.models.hf_import import HFImportError, continued_pretraining_config

    tokenizer = load_tokenizer(small_data["outputs"]["tokenizer_dir"])
    hf_dir = _tiny_qwen3(tokenizer, tmp_path / "qwen3")
    recipe = GPTModelConfig(**TINY_GPT)
    assert continued_pretraining_config(hf_dir, recipe, tokenizer).hf_architecture == "qwen3"
    bigger = AutoTokenizer.from_pretrained(hf_dir)
    bigger.add_tokens(["<|im_end|>"])  # 513 tokens: more than the model's 512 rows
    with pytest.raises(HFImportError, match="data tokenizer has 513 tokens but .* only 512 embedding rows"):
        continued_pretraining_config(hf_dir, recipe, bigger)
    # A model with room for 600 tokens whose own tokenizer has the extra token: not the data's.
    other_dir = _tiny_qwen3(bigger, tmp_path / "other", vocab_size=600)
    with pytest.raises(HFImportError, match="the data stage's tokenizer is not the tokenizer of"):
        continued_pretraining_config(other_dir, recipe, tokenizer)
