"""The smallest HF causal LM the unit tests train and sample from (built from config, no download)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(vocab: int = 64) -> LlamaForCausalLM:
    """2 layers, 32 wide, GQA (4 heads, 2 KV heads), seeded: the same weights on every call."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg)


def engine_llama(vocab: int = 96) -> LlamaForCausalLM:
    """The smallest Llama vLLM's CPU attention takes (2 heads of 32), seeded, in eval mode."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).eval()


def vocab_heavy_qwen3(vocab: int = 4096) -> torch.nn.Module:
    """A tiny Qwen3 whose logits dominate its memory, as at real vocabularies (32 wide, seeded)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(cfg)
