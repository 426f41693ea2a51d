"""Model FLOPs per token and device peak FLOPs, for tokens/s -> MFU.

MFU = train_flops_per_token * tokens/s / peak_flops (PaLM's definition: 6N for the
matmul weights, forward + backward, plus 12 * L * s * nh * d for attention scores;
no activation recomputation counted).
"""

from __future__ import annotations

from slingshot.models.config import GPTModelConfig

# Dense peak FLOP/s (no sparsity) by device-name fragment, checked in order.
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    # (name fragment, bf16/fp16 tensor core, fp32)
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),  # SXM
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("A10", 125e12, 31.2e12),
)


def peak_flops(device_name: str, bf16: bool = True) -> float | None:
    """Peak FLOP/s of a GPU by `torch.cuda.get_device_name()`; None when unknown (e.g. a CPU)."""
    for fragment, bf16_peak, fp32_peak in PEAK_FLOPS:
        if fragment.lower() in device_name.lower():
            return bf16_peak if bf16 else fp32_peak
    return None


def train_flops_per_token(cfg: GPTModelConfig, seq_length: int | None = None) -> float:
    """Forward+backward FLOPs per trained token (the output projection counts even when tied)."""
    s = seq_length or cfg.seq_length
    matmul_params = cfg.num_parameters(include_embeddings=False) + cfg.vocab_size * cfg.hidden_size
    attention = 12 * cfg.num_layers * s * cfg.num_attention_heads * cfg.head_dim
    return 6.0 * matmul_params + attention


def mfu(cfg: GPTModelConfig, tokens_per_second: float, device_name: str, bf16: bool = True) -> float | None:
    peak = peak_flops(device_name, bf16)
    return None if peak is None else train_flops_per_token(cfg) * tokens_per_second / peak
