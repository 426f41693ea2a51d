"""GPTModelConfig validation, vocab padding, and parameter count against the HF model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slingshot.models.config import GPTModelConfig, ParallelConfig
from slingshot.models.export import hf_config

BASE = dict(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=160,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=100,
    seq_length=32,
)


def test_defaults_and_derived() -> None:
    cfg = GPTModelConfig(**BASE)
    assert cfg.head_dim == 16 and cfg.query_groups == 2 and cfg.max_positions == 32
    assert GPTModelConfig(**{**BASE, "num_query_groups": None}).query_groups == 4
    assert ParallelConfig().tensor_parallel_size == 1


def test_vocab_padding_follows_megatron() -> None:
    cfg = GPTModelConfig(**{**BASE, "vocab_size": 50257})
    assert cfg.padded_vocab_size(1) == 50304
    assert cfg.padded_vocab_size(2) == 50432
    assert GPTModelConfig(**{**BASE, "vocab_size": 128}).padded_vocab_size(1) == 128


@pytest.mark.parametrize(
    "bad",
    [
        {"num_query_groups": 3},  # heads not divisible by groups
        {"hidden_size": 66},  # hidden not divisible by heads
        {"hf_architecture": "gpt2"},
        {"unknown_field": 1},
    ],
)
def test_invalid_configs_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        GPTModelConfig(**{**BASE, **bad})


@pytest.mark.parametrize("tie", [False, True])
def test_num_parameters_matches_hf(tie: bool) -> None:
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cfg = GPTModelConfig(**{**BASE, "tie_embeddings": tie})
    n_hf = sum(p.numel() for p in LlamaForCausalLM(hf_config(cfg)).parameters())
    assert cfg.num_parameters() == n_hf
    qwen = GPTModelConfig(**{**BASE, "tie_embeddings": tie, "hf_architecture": "qwen2", "add_qkv_bias": True})
    assert qwen.num_parameters() == sum(p.numel() for p in Qwen2ForCausalLM(hf_config(qwen)).parameters())


def test_hf_config_carries_rope_eps_tying() -> None:
    cfg = GPTModelConfig(**{**BASE, "rotary_base": 1e6, "norm_epsilon": 1e-5, "tie_embeddings": True})
    hf = hf_config(cfg)
    assert hf.rope_parameters["rope_theta"] == 1e6
    assert hf.rms_norm_eps == 1e-5 and hf.tie_word_embeddings
    assert hf.num_key_value_heads == 2 and hf.intermediate_size == 160


def test_qwen3_has_qk_norm_and_llama3_rope_scaling_is_llama_only() -> None:
    qwen3 = GPTModelConfig(**{**BASE, "hf_architecture": "qwen3"})
    assert qwen3.qk_layernorm and not GPTModelConfig(**BASE).qk_layernorm
    # Two RMSNorm weights of head_dim per layer on top of the same Llama layout.
    extra = qwen3.num_parameters() - GPTModelConfig(**BASE).num_parameters()
    assert extra == BASE["num_layers"] * 2 * qwen3.head_dim
    scaling = {"factor": 8.0, "original_max_position_embeddings": 128}
    llama3 = GPTModelConfig(**{**BASE, "rope_scaling": scaling})
    assert hf_config(llama3).rope_parameters == {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,
    }
    with pytest.raises(ValidationError, match="rope_scaling .* only for hf_architecture 'llama'"):
        GPTModelConfig(**{**BASE, "hf_architecture": "qwen3", "rope_scaling": scaling})
    with pytest.raises(ValidationError, match="high_freq_factor must be greater"):
        GPTModelConfig(**{**BASE, "rope_scaling": {**scaling, "high_freq_factor": 1.0}})
