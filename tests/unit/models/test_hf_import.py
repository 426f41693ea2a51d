"""HF -> Megatron-Core import: every family (Llama-3 with RoPE scaling, Qwen2 with QKV bias,
Qwen3 with QK-norm; tied and untied) imports at TP=1 and TP=2 (gloo, spawned ranks) with
logits equal to HF's (fp32, atol 1e-4), and exports back bit-exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from slingshot.models.export import merge_tp_shards
from slingshot.models.hf_import import (
    HFImportError,
    gpt_config_from_hf,
    hf_to_mcore_state_dict,
    read_hf_state_dict,
    split_tp_shards,
)

from .mcore_worker import SEQ, import_cases
from .test_export_matches_mcore import _spawn

COMMON: dict[str, Any] = dict(
    vocab_size=100,  # padded to 128 (TP=1) and 128 (TP=2, 64 x 2) rows: exercises the pad and trim
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
)
# Non-default low/high factors and a short original context, so the llama3 formula's three
# bands (kept, divided, blended) all occur among the 8 frequencies of head_dim 16.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 2.0,
    "original_max_position_embeddings": 16,
}
FAMILIES: dict[str, PretrainedConfig] = {
    "llama3_untied": LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE),
    "qwen2_tied_bias": Qwen2Config(**COMMON, tie_word_embeddings=True),
    "qwen3_untied": Qwen3Config(**COMMON),
    "qwen3_tied": Qwen3Config(**COMMON, tie_word_embeddings=True),
}


def _hf_model(config: PretrainedConfig) -> torch.nn.Module:
    """Random weights, with norms and biases moved off their 1/0 init (so a dropped one shows)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    for name, config in FAMILIES.items():
        _hf_model(config).save_pretrained(root / name)
    return {name: root / name for name in FAMILIES}


@pytest.fixture(scope="module", params=[1, 2], ids=["tp1", "tp2"])
def imported(request: pytest.FixtureRequest, hf_dirs: dict[str, Path], tmp_path_factory) -> tuple[int, Path]:
    tp = request.param
    out = tmp_path_factory.mktemp(f"import_tp{tp}")
    _spawn(tp, {n: str(p) for n, p in hf_dirs.items()}, out, worker=import_cases)
    return tp, out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_import_logits_match_hf_and_export_is_bit_exact(
    imported: tuple[int, Path], hf_dirs: dict[str, Path], name: str
) -> None:
    tp, root = imported
    rec = torch.load(root / name / "mcore.pt", weights_only=False)
    hf = AutoModelForCausalLM.from_pretrained(hf_dirs[name], dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(rec["tokens"]).logits
    assert rec["logits"].shape == (2, SEQ, 100)
    torch.testing.assert_close(rec["logits"], expected, atol=1e-4, rtol=0)
    # Each TP rank held its slice: 8 q/k/v heads of 16 rows over TP ranks, 2 x 96 fc1 rows.
    shapes = rec["shard_shapes"]
    assert shapes["decoder.layers.0.self_attention.linear_qkv.weight"] == (8 * 16 // tp, 64)
    assert shapes["decoder.layers.0.mlp.linear_fc1.weight"] == (2 * 96 // tp, 64)
    original = load_file(hf_dirs[name] / "model.safetensors")
    exported = load_file(root / name / "hf" / "model.safetensors")
    assert exported.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key
    back = AutoModelForCausalLM.from_pretrained(root / name / "hf").config
    assert back.model_type == hf.config.model_type
    assert back.tie_word_embeddings == hf.config.tie_word_embeddings
    assert back.rope_parameters == hf.config.rope_parameters


def test_llama3_rope_scaling_changes_the_function(hf_dirs: dict[str, Path]) -> None:
    """The llama3 case is not trivially equal to the default RoPE at this length."""
    scaled = AutoModelForCausalLM.from_pretrained(hf_dirs["llama3_untied"]).eval()
    plain = AutoModelForCausalLM.from_config(LlamaConfig(**COMMON)).eval()
    plain.load_state_dict(scaled.state_dict())
    tokens = torch.arange(SEQ).unsqueeze(0)
    with torch.no_grad():
        assert (scaled(tokens).logits - plain(tokens).logits).abs().max() > 1e-3


def test_config_mapping() -> None:
    cfg = gpt_config_from_hf(FAMILIES["llama3_untied"], seq_length=32)
    assert (cfg.hf_architecture, cfg.add_qkv_bias, cfg.qk_layernorm, cfg.tie_embeddings) == (
        "llama",
        False,
        False,
        False,
    )
    assert cfg.rope_scaling is not None and cfg.rope_scaling.high_freq_factor == 2.0
    assert cfg.rope_scaling.original_max_position_embeddings == 16
    qwen2 = gpt_config_from_hf(FAMILIES["qwen2_tied_bias"], seq_length=32)
    assert (qwen2.add_qkv_bias, qwen2.qk_layernorm, qwen2.tie_embeddings) == (True, False, True)
    qwen3 = gpt_config_from_hf(FAMILIES["qwen3_untied"], seq_length=32)
    assert (qwen3.add_qkv_bias, qwen3.qk_layernorm, qwen3.rope_scaling) == (False, True, None)
    assert (qwen3.num_query_groups, qwen3.head_dim, qwen3.max_positions) == (2, 16, 64)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LlamaConfig(**COMMON, mlp_bias=True), "mlp_bias"),
        (Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=8), "use_sliding_window"),
        (
            LlamaConfig(**COMMON, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
            "rope_type 'yarn'",
        ),
        (Qwen3Config(**COMMON, hidden_act="gelu"), "hidden_act"),
        (PretrainedConfig(), "model_type"),
    ],
)
def test_unsupported_configs_are_refused_by_name(config: PretrainedConfig, message: str) -> None:
    with pytest.raises(HFImportError, match=message):
        gpt_config_from_hf(config, seq_length=32)


def test_nonzero_o_proj_bias_is_refused(tmp_path: Path) -> None:
    config = LlamaConfig(**COMMON, attention_bias=True)
    _hf_model(config).save_pretrained(tmp_path)
    with pytest.raises(HFImportError, match=r"model\.layers\.0\.self_attn\.o_proj\.bias is non-zero"):
        hf_to_mcore_state_dict(read_hf_state_dict(tmp_path), gpt_config_from_hf(config, seq_length=32))


def test_split_inverts_merge(hf_dirs: dict[str, Path]) -> None:
    config = FAMILIES["qwen3_untied"]
    cfg = gpt_config_from_hf(config, seq_length=32, make_vocab_size_divisible_by=16)
    full = hf_to_mcore_state_dict(read_hf_state_dict(hf_dirs["qwen3_untied"]), cfg, tensor_parallel_size=2)
    assert full["embedding.word_embeddings.weight"].shape == (128, 64)  # 100 rows padded to 4 x 16 x 2
    assert not full["embedding.word_embeddings.weight"][100:].any()
    shards = split_tp_shards(full, 2)
    gate0, up0 = shards[0]["decoder.layers.0.mlp.linear_fc1.weight"].chunk(2)
    gate, up = full["decoder.layers.0.mlp.linear_fc1.weight"].chunk(2)
    assert torch.equal(gate0, gate[:48]) and torch.equal(up0, up[:48])
    merged = merge_tp_shards(shards)
    assert all(torch.equal(merged[k], full[k]) for k in full)


def test_sharded_safetensors_are_read_whole(tmp_path: Path) -> None:
    model = _hf_model(FAMILIES["qwen3_untied"])
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    read = read_hf_state_dict(tmp_path)
    expected = model.state_dict()
    assert read.keys() == expected.keys() and all(torch.equal(read[k], expected[k]) for k in read)
    with pytest.raises(HFImportError, match="no model.safetensors"):
        read_hf_state_dict(tmp_path / "nothing")
