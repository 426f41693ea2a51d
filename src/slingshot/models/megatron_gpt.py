"""Megatron-Core GPT in the Llama/Qwen2/Qwen3 layouts, plus process-group setup.

RMSNorm, SwiGLU (gated linear unit with SiLU), RoPE (non-interleaved, like HF's
rotate_half; optionally Llama-3's frequency scaling), no linear biases (optional qkv bias
for Qwen2), QK-norm for Qwen3, GQA, tied or untied embeddings. Transformer Engine's layer spec where TE imports, Megatron's local spec
otherwise (CPU: fp32, unfused DotProductAttention with an internally built causal mask).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from slingshot.models import cpu_shim
from slingshot.models.config import GPTModelConfig, ParallelConfig


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return False
    return torch.cuda.is_available()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_model_parallel(
    tp: int = 1,
    pp: int = 1,
    backend: str | None = None,
    *,
    seed: int = 1234,
    rank: int | None = None,
    world_size: int | None = None,
) -> None:
    """Initialise torch.distributed (env:// or a single local process) and Megatron's groups.

    Rank and world size come from the arguments, else RANK/WORLD_SIZE, else a single
    process on 127.0.0.1. Idempotent: an existing process group is reused; Megatron's
    model-parallel groups are rebuilt only when missing. Also seeds Megatron's RNG
    tracker (which the CPU shim redirects to the CPU generator).
    """
    cpu_shim.apply()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            if world_size > 1:
                raise RuntimeError("MASTER_PORT must be set when world_size > 1")
            os.environ["MASTER_PORT"] = str(free_port())
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=10))
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    elif (
        parallel_state.get_tensor_model_parallel_world_size() != tp
        or parallel_state.get_pipeline_model_parallel_world_size() != pp
    ):
        raise RuntimeError("model parallel already initialised with different sizes")
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


@contextmanager
def model_parallel(parallel: ParallelConfig, *, seed: int) -> Iterator[None]:
    """Megatron's groups for one job (see :func:`init_model_parallel`), torn down after it,
    with the process group too when this made it (a single process)."""
    created_group = not dist.is_initialized()
    init_model_parallel(parallel.tensor_parallel_size, parallel.pipeline_parallel_size, seed=seed)
    try:
        yield
    finally:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def destroy_model_parallel() -> None:
    """Tear down Megatron's groups and the default process group (tests, benchmarks)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def transformer_config(
    cfg: GPTModelConfig,
    parallel: ParallelConfig | None = None,
    *,
    bf16: bool = False,
    use_te: bool = False,
) -> TransformerConfig:
    """Megatron TransformerConfig for `cfg`; fp32 unless `bf16` (GPU)."""
    parallel = parallel or ParallelConfig()
    dtype = torch.bfloat16 if bf16 else torch.float32
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.query_groups,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=cfg.add_qkv_bias,
        qk_layernorm=cfg.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=parallel.tensor_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_parallel_size,
        sequence_parallel=parallel.sequence_parallel and parallel.tensor_parallel_size > 1,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=bf16,
        # Fused kernels are CUDA/TE-only; the unfused paths are exact in fp32 on CPU.
        bias_activation_fusion=use_te,
        masked_softmax_fusion=use_te,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        # Init the full matrix on CPU and split it: the same weights for any TP size.
        use_cpu_initialization=not torch.cuda.is_available(),
        attention_backend=AttnBackend.auto if use_te else AttnBackend.local,
    )


def layer_spec(use_te: bool, qk_layernorm: bool = False) -> ModuleSpec:
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    return get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization="RMSNorm")


def _scale_rope(model: GPTModel, cfg: GPTModelConfig) -> None:
    """Llama-3 RoPE scaling with the config's own four parameters.

    GPTModel's ``rope_scaling=True`` calls ``RotaryEmbedding._apply_scaling`` with only the
    factor, keeping low/high_freq_factor 1/4 and original_max_position_embeddings 8192
    fixed; the method itself takes all four, so it is called here with the HF config's
    values on the unscaled frequencies, before any forward (its cos/sin cache is empty).
    """
    if cfg.rope_scaling is None:
        return
    rope = model.rotary_pos_emb
    scaling = cfg.rope_scaling
    rope.inv_freq = rope._apply_scaling(
        rope.inv_freq,
        factor=scaling.factor,
        low_freq_factor=scaling.low_freq_factor,
        high_freq_factor=scaling.high_freq_factor,
        original_max_position_embeddings=scaling.original_max_position_embeddings,
    )


def build_gpt(
    cfg: GPTModelConfig,
    parallel: ParallelConfig | None = None,
    *,
    bf16: bool = False,
    use_te: bool | None = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
) -> GPTModel:
    """Build this rank's Megatron-Core GPTModel (call `init_model_parallel` first).

    `use_te=None` picks Transformer Engine when it imports on a GPU machine.
    `pre_process`/`post_process` default to this rank's pipeline position.
    """
    cpu_shim.apply()  # also when the caller set up the process groups itself
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("call init_model_parallel() before build_gpt()")
    parallel = parallel or ParallelConfig(
        tensor_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
    )
    if bf16 and not torch.cuda.is_available():
        raise ValueError("bf16 is a GPU option; CPU training runs in fp32")
    use_te = have_transformer_engine() if use_te is None else use_te
    if parallel.sequence_parallel and parallel.tensor_parallel_size > 1 and not use_te:
        raise ValueError("sequence parallelism needs the Transformer Engine spec (torch norms lack it)")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    model = GPTModel(
        config=transformer_config(cfg, parallel, bf16=bf16, use_te=use_te),
        transformer_layer_spec=layer_spec(use_te, cfg.qk_layernorm),
        vocab_size=cfg.padded_vocab_size(parallel.tensor_parallel_size),
        max_sequence_length=cfg.max_positions,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rotary_base,
        rotary_percent=1.0,
    )
    _scale_rope(model, cfg)
    if torch.cuda.is_available():
        model = model.cuda()
    return model


@torch.no_grad()
def full_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[batch, seq, vocab_size] fp32 logits of a PP=1 model, gathered over TP and vocab-trimmed."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    was_training = model.training
    model.eval()
    try:
        logits = model(tokens, None, None)  # [b, s, V_pad / TP]
    finally:
        model.train(was_training)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    return logits[..., :vocab_size].float()
