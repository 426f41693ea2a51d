"""The exported HF model's logits equal the Megatron-Core model's logits (fp32, atol 1e-4).

Megatron runs in spawned processes (gloo): TP=1 in one, TP=2 in two. Each case trains a
few AdamW steps first so the weights are off their init.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from slingshot.models.config import GPTModelConfig
from slingshot.models.export import build_hf_model, merge_pp_stages, merge_tp_shards

from .mcore_worker import run_cases

TINY: dict[str, Any] = dict(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=128,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=100,  # padded to 128 by Megatron: exercises the vocab trim
    make_vocab_size_divisible_by=64,
    seq_length=32,
    rotary_base=50000.0,
    norm_epsilon=1e-5,
)
TP1_CASES = {
    "llama_untied": {"model": TINY, "checkpoint": True},
    "llama_tied": {"model": {**TINY, "tie_embeddings": True}},
    "qwen2_qkv_bias": {"model": {**TINY, "hf_architecture": "qwen2", "add_qkv_bias": True}},
    "qwen2_no_bias_tied": {"model": {**TINY, "hf_architecture": "qwen2", "tie_embeddings": True}},
}
TP2_CASES = {
    "tp2_llama_untied_distopt": {"model": TINY, "dist_opt": True, "checkpoint": True},
    "tp2_qwen2_tied_qkv_bias": {
        "model": {**TINY, "hf_architecture": "qwen2", "add_qkv_bias": True, "tie_embeddings": True}
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(world_size: int, cases: dict[str, Any], out: Path, worker: Any = run_cases) -> Path:
    mp.start_processes(
        worker,
        args=(world_size, _free_port(), cases, str(out)),
        nprocs=world_size,
        start_method="spawn",
        join=True,
    )
    return out


@pytest.fixture(scope="module")
def tp1_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _spawn(1, TP1_CASES, tmp_path_factory.mktemp("tp1"))


@pytest.fixture(scope="module")
def tp2_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _spawn(2, TP2_CASES, tmp_path_factory.mktemp("tp2"))


def _check_case(root: Path, name: str, case: dict[str, Any]) -> None:
    rec = torch.load(root / name / "mcore.pt", weights_only=False)
    assert rec["shim_idempotent"]
    assert all(torch.isfinite(torch.tensor(rec["losses"])))
    # Trained: weights moved away from the initialisation.
    assert (rec["logits"] - rec["init_logits"]).abs().max() > 1e-3
    hf = AutoModelForCausalLM.from_pretrained(root / name / "hf", dtype=torch.float32).eval()
    cfg = GPTModelConfig(**case["model"])
    expected_cls = "Qwen2ForCausalLM" if cfg.hf_architecture == "qwen2" else "LlamaForCausalLM"
    assert type(hf).__name__ == expected_cls
    assert hf.config.tie_word_embeddings == cfg.tie_embeddings
    assert hf.config.rope_parameters["rope_theta"] == cfg.rotary_base
    assert hf.config.rms_norm_eps == cfg.norm_epsilon
    assert hf.config.num_key_value_heads == cfg.num_query_groups
    with torch.no_grad():
        hf_logits = hf(rec["tokens"]).logits
    assert hf_logits.shape == rec["logits"].shape == (2, 32, cfg.vocab_size)
    torch.testing.assert_close(hf_logits, rec["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(TP1_CASES))
def test_tp1_export_logits_match(tp1_runs: Path, name: str) -> None:
    _check_case(tp1_runs, name, TP1_CASES[name])


@pytest.mark.parametrize("name", list(TP2_CASES))
def test_tp2_export_logits_match(tp2_runs: Path, name: str) -> None:
    _check_case(tp2_runs, name, TP2_CASES[name])


def test_tp2_state_dicts_are_sharded(tp2_runs: Path) -> None:
    grid = torch.load(tp2_runs / "tp2_llama_untied_distopt" / "mcore.pt", weights_only=False)["grid"]
    assert len(grid) == 1 and len(grid[0]) == 2
    qkv = "decoder.layers.0.self_attention.linear_qkv.weight"
    assert grid[0][0][qkv].shape == ((4 + 2 * 2) * 16 // 2, 64)  # (nh + 2 ng) * d / TP rows
    assert not torch.equal(grid[0][0][qkv], grid[0][1][qkv])


def test_pipeline_stages_merge_like_one_stage(tp1_runs: Path) -> None:
    """Split a PP=1 state dict into two fake pipeline stages (layers renumbered from 0)."""
    rec = torch.load(tp1_runs / "llama_untied" / "mcore.pt", weights_only=False)
    full = rec["grid"][0][0]
    first = {k: v for k, v in full.items() if k.startswith(("embedding.", "decoder.layers.0."))}
    second = {
        k.replace("decoder.layers.1.", "decoder.layers.0."): v
        for k, v in full.items()
        if k.startswith("decoder.layers.1.") or k.startswith(("decoder.final", "output_layer"))
    }
    merged = merge_pp_stages([merge_tp_shards([first]), merge_tp_shards([second])])
    assert merged.keys() == merge_tp_shards([full]).keys()
    cfg = GPTModelConfig(**TP1_CASES["llama_untied"]["model"])
    hf = build_hf_model([[first], [second]], cfg)
    with torch.no_grad():
        torch.testing.assert_close(hf(rec["tokens"]).logits, rec["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("runs", "name"), [("tp1_runs", "llama_untied"), ("tp2_runs", "tp2_llama_untied_distopt")]
)
def test_dist_checkpoint_roundtrip_on_cpu(runs: str, name: str, request: pytest.FixtureRequest) -> None:
    """The CPU shim covers dist_checkpointing: save, load into a fresh model, resume exactly."""
    rec = torch.load(request.getfixturevalue(runs) / name / "mcore.pt", weights_only=False)["checkpoint"]
    assert rec["reload_logits_equal"]
    before, after = rec["resumed_step"]
    assert before == pytest.approx(after, abs=1e-6)
