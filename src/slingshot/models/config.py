"""Typed model and parallelism configs for the Megatron-Core GPT (Llama/Qwen2/Qwen3 layouts).

Qwen2 and attention biases: HF's Qwen2 attention always has q/k/v biases. We support
both choices exactly: `add_qkv_bias=True` trains Megatron with qkv biases (the real
Qwen2 layout) and exports them; `add_qkv_bias=False` (the SPEC's "no biases" default)
exports a Qwen2 directory whose q/k/v biases are zeros, which is the same function.
Llama has `attention_bias` in its config, so a Llama export carries the biases when
`add_qkv_bias=True`. Qwen3 has no q/k/v biases but RMS-normalises each query and key
head before RoPE (`hf_architecture: qwen3` implies Megatron's q_layernorm/k_layernorm). Llama-3.1+
scales its RoPE frequencies (`rope_scaling`, HF's `rope_type: llama3`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Llama3RopeScaling(BaseModel):
    """HF's ``rope_parameters: {rope_type: llama3, ...}``: long wavelengths divided by
    ``factor``, short ones kept, a smooth blend in between (Llama 3.1/3.2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: float = Field(gt=0)
    low_freq_factor: float = Field(default=1.0, gt=0)
    high_freq_factor: float = Field(default=4.0, gt=0)
    original_max_position_embeddings: int = Field(default=8192, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Llama3RopeScaling:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("rope_scaling: high_freq_factor must be greater than low_freq_factor")
        return self


class GPTModelConfig(BaseModel):
    """Architecture of a decoder-only GPT in the Llama/Qwen2 layout (RMSNorm, SwiGLU, RoPE, GQA)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    ffn_hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_query_groups: int | None = Field(default=None, gt=0, description="KV heads (GQA); None = MHA")
    kv_channels: int | None = Field(default=None, gt=0, description="head dim; None = hidden/heads")
    vocab_size: int = Field(gt=0, description="tokenizer vocab size (unpadded)")
    make_vocab_size_divisible_by: int = Field(
        default=128, gt=0, description="Megatron pads vocab to a multiple of this x TP size"
    )
    seq_length: int = Field(gt=0, description="training sequence length")
    max_position_embeddings: int | None = Field(default=None, gt=0, description="None = seq_length")
    rotary_base: float = Field(default=10000.0, gt=0)
    norm_epsilon: float = Field(default=1e-6, gt=0)
    tie_embeddings: bool = False
    add_qkv_bias: bool = False
    init_method_std: float = Field(default=0.02, gt=0)
    hf_architecture: Literal["llama", "qwen2", "qwen3"] = "llama"
    rope_scaling: Llama3RopeScaling | None = None

    @model_validator(mode="after")
    def _check_heads(self) -> GPTModelConfig:
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads (or set kv_channels)")
        if self.num_attention_heads % self.query_groups:
            raise ValueError("num_attention_heads must be divisible by num_query_groups")
        if self.rope_scaling is not None and self.hf_architecture != "llama":
            raise ValueError("rope_scaling (llama3) exists only for hf_architecture 'llama'")
        return self

    @property
    def qk_layernorm(self) -> bool:
        """Qwen3 RMS-normalises each query and key head (Megatron's q/k_layernorm)."""
        return self.hf_architecture == "qwen3"

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings or self.seq_length

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        """Megatron-LM's rule: round the vocab up to a multiple of `divisible_by * TP`."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel_size
        return -(-self.vocab_size // multiple) * multiple

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Trainable parameter count of the unpadded model (for FLOPs / MFU)."""
        h, f, d = self.hidden_size, self.ffn_hidden_size, self.head_dim
        qkv = h * d * (self.num_attention_heads + 2 * self.query_groups)
        if self.add_qkv_bias:
            qkv += d * (self.num_attention_heads + 2 * self.query_groups)
        per_layer = qkv + self.num_attention_heads * d * h + 3 * h * f + 2 * h
        if self.qk_layernorm:
            per_layer += 2 * d
        total = self.num_layers * per_layer + h
        if include_embeddings:
            total += self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return total


class ParallelConfig(BaseModel):
    """How the model is split across processes; data parallel is whatever remains of the world."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor_parallel_size: int = Field(default=1, gt=0)
    pipeline_parallel_size: int = Field(default=1, gt=0)
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
