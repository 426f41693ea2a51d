"""Exact Megatron-Core GPT -> Hugging Face Llama/Qwen2/Qwen3 export.

Parameter names observed in megatron-core 0.16.1 (`GPTModel.state_dict()`):

    embedding.word_embeddings.weight                  [V_pad/TP, H]   vocab-parallel
    decoder.layers.{i}.input_layernorm.weight         [H]             local spec
    decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight   [H]  TE spec (fused norm)
    decoder.layers.{i}.self_attention.linear_qkv.weight  [(nh+2ng)d/TP, H]  column-parallel
    decoder.layers.{i}.self_attention.linear_qkv.bias    [(nh+2ng)d/TP]     add_qkv_bias only
    decoder.layers.{i}.self_attention.q_layernorm.weight [d]              Qwen3 QK-norm (replicated)
    decoder.layers.{i}.self_attention.k_layernorm.weight [d]              Qwen3 QK-norm (replicated)
    decoder.layers.{i}.self_attention.linear_proj.weight [H, nh*d/TP]       row-parallel
    decoder.layers.{i}.pre_mlp_layernorm.weight       [H]             local spec
    decoder.layers.{i}.mlp.linear_fc1.layer_norm_weight  [H]          TE spec (fused norm)
    decoder.layers.{i}.mlp.linear_fc1.weight          [2F/TP, H]      column-parallel, [gate; up] per rank
    decoder.layers.{i}.mlp.linear_fc2.weight          [H, F/TP]       row-parallel
    decoder.final_layernorm.weight                    [H]
    output_layer.weight                               [V_pad/TP, H]   absent when tied
    *._extra_state                                    (ignored)

linear_qkv rows are grouped by query group: for each of the ng groups, its
(nh/ng)*d query rows, then d key rows, then d value rows. A TP rank holds ng/TP whole
groups, so its shards concatenate on dim 0. linear_fc1 is NOT a plain dim-0 concat:
each rank holds [gate_r; up_r], so shards are split first and gates/ups concatenated.
Pipeline stages number their layers from 0; stage s is offset by the layers of stages < s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from slingshot import dist
from slingshot.io import atomic_dir
from slingshot.models.config import GPTModelConfig

StateDict = Mapping[str, torch.Tensor]
HF_CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
}

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# Layer-local key -> how TP shards combine ("col": dim 0, "row": dim 1, "fc1": gate/up-aware,
# "rep": replicated, take rank 0).
_LAYER_SHARDING = {
    "input_layernorm.weight": "rep",
    "self_attention.linear_qkv.layer_norm_weight": "rep",
    "self_attention.linear_qkv.weight": "col",
    "self_attention.linear_qkv.bias": "col",
    "self_attention.q_layernorm.weight": "rep",
    "self_attention.k_layernorm.weight": "rep",
    "self_attention.linear_proj.weight": "row",
    "pre_mlp_layernorm.weight": "rep",
    "mlp.linear_fc1.layer_norm_weight": "rep",
    "mlp.linear_fc1.weight": "fc1",
    "mlp.linear_fc2.weight": "row",
}
_GLOBAL_SHARDING = {
    "embedding.word_embeddings.weight": "col",
    "decoder.final_layernorm.weight": "rep",
    "output_layer.weight": "col",
}


def _clean(sd: StateDict) -> dict[str, torch.Tensor]:
    """Drop `_extra_state` (TE/FP8 metadata) and move tensors to fp32 CPU."""
    return {
        k: v.detach().to("cpu", torch.float32)
        for k, v in sd.items()
        if not k.endswith("_extra_state") and isinstance(v, torch.Tensor)
    }


def _merge(kind: str, shards: list[torch.Tensor]) -> torch.Tensor:
    if kind == "rep" or len(shards) == 1:
        return shards[0]
    if kind == "col":
        return torch.cat(shards, dim=0)
    if kind == "row":
        return torch.cat(shards, dim=1)
    if kind == "fc1":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    raise ValueError(kind)


def merge_tp_shards(shards: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """Combine the per-TP-rank state dicts of one pipeline stage into a full state dict."""
    cleaned = [_clean(sd) for sd in shards]
    keys = list(cleaned[0])
    for i, sd in enumerate(cleaned[1:], start=1):
        if list(sd) != keys:
            raise ValueError(f"TP rank {i} has different parameter names than rank 0")
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        m = _LAYER_RE.match(key)
        kind = _LAYER_SHARDING.get(m.group(2)) if m else _GLOBAL_SHARDING.get(key)
        if kind is None:
            raise KeyError(f"unsupported Megatron parameter for export: {key}")
        out[key] = _merge(kind, [sd[key] for sd in cleaned])
    return out


def merge_pp_stages(stages: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """Renumber each pipeline stage's layers after the previous stages' and union the dicts."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for sd in stages:
        n_layers = 0
        for key, value in sd.items():
            m = _LAYER_RE.match(key)
            if m:
                idx = int(m.group(1))
                n_layers = max(n_layers, idx + 1)
                out[f"decoder.layers.{idx + offset}.{m.group(2)}"] = value
            elif key == "embedding.word_embeddings.weight" and key in out:
                continue  # tied embeddings: the last stage's copy equals the first's
            else:
                out[key] = value
        offset += n_layers
    return out


def merge_state_dicts(
    state_dicts: StateDict | Sequence[StateDict] | Sequence[Sequence[StateDict]],
) -> dict[str, torch.Tensor]:
    """One dict (TP=PP=1), a list over TP ranks, or a list over PP stages of lists over TP ranks."""
    if isinstance(state_dicts, Mapping):
        return merge_tp_shards([state_dicts])
    items = list(state_dicts)
    if items and not isinstance(items[0], Mapping):
        return merge_pp_stages([merge_tp_shards(list(tp)) for tp in items])
    return merge_tp_shards(items)


def _norm_weight(sd: StateDict, prefix: str, local: str, fused: str) -> torch.Tensor:
    return sd[f"{prefix}.{local}"] if f"{prefix}.{local}" in sd else sd[f"{prefix}.{fused}"]


def _split_qkv(t: torch.Tensor, cfg: GPTModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Un-fuse mcore's per-query-group [q..., k, v] rows into HF's q, k, v (weight or bias)."""
    ng, d = cfg.query_groups, cfg.head_dim
    q_per_group = cfg.num_attention_heads // ng
    grouped = t.reshape(ng, (q_per_group + 2) * d, *t.shape[1:])
    q, k, v = grouped.split([q_per_group * d, d, d], dim=1)
    return (
        q.reshape(cfg.num_attention_heads * d, *t.shape[1:]),
        k.reshape(ng * d, *t.shape[1:]),
        v.reshape(ng * d, *t.shape[1:]),
    )


def mcore_to_hf_state_dict(sd: StateDict, cfg: GPTModelConfig) -> dict[str, torch.Tensor]:
    """Full (merged) mcore state dict -> HF Llama/Qwen2/Qwen3 tensor names, vocab padding trimmed."""
    v = cfg.vocab_size
    embed = sd["embedding.word_embeddings.weight"][:v]
    hf: dict[str, torch.Tensor] = {"model.embed_tokens.weight": embed}
    for i in range(cfg.num_layers):
        p, h = f"decoder.layers.{i}", f"model.layers.{i}"
        hf[f"{h}.input_layernorm.weight"] = _norm_weight(
            sd, p, "input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"
        )
        hf[f"{h}.post_attention_layernorm.weight"] = _norm_weight(
            sd, p, "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"
        )
        q, k, val = _split_qkv(sd[f"{p}.self_attention.linear_qkv.weight"], cfg)
        hf[f"{h}.self_attn.q_proj.weight"] = q
        hf[f"{h}.self_attn.k_proj.weight"] = k
        hf[f"{h}.self_attn.v_proj.weight"] = val
        bias_key = f"{p}.self_attention.linear_qkv.bias"
        if (bias_key in sd) != cfg.add_qkv_bias:
            raise ValueError(
                f"add_qkv_bias={cfg.add_qkv_bias} but {bias_key} is {'' if bias_key in sd else 'not '}there"
            )
        if bias_key in sd:
            qb, kb, vb = _split_qkv(sd[bias_key], cfg)
        elif cfg.hf_architecture == "qwen2":  # Qwen2 always has q/k/v biases: zeros = no bias
            qb, kb, vb = (torch.zeros(t.shape[0]) for t in (q, k, val))
        else:
            qb = kb = vb = None
        if qb is not None:
            hf[f"{h}.self_attn.q_proj.bias"] = qb
            hf[f"{h}.self_attn.k_proj.bias"] = kb
            hf[f"{h}.self_attn.v_proj.bias"] = vb
        if cfg.qk_layernorm:
            hf[f"{h}.self_attn.q_norm.weight"] = sd[f"{p}.self_attention.q_layernorm.weight"]
            hf[f"{h}.self_attn.k_norm.weight"] = sd[f"{p}.self_attention.k_layernorm.weight"]
        hf[f"{h}.self_attn.o_proj.weight"] = sd[f"{p}.self_attention.linear_proj.weight"]
        if qb is not None and cfg.hf_architecture != "qwen2":  # attention_bias also adds o_proj.bias
            hf[f"{h}.self_attn.o_proj.bias"] = torch.zeros(cfg.hidden_size)
        gate, up = sd[f"{p}.mlp.linear_fc1.weight"].chunk(2, dim=0)
        hf[f"{h}.mlp.gate_proj.weight"] = gate
        hf[f"{h}.mlp.up_proj.weight"] = up
        hf[f"{h}.mlp.down_proj.weight"] = sd[f"{p}.mlp.linear_fc2.weight"]
    hf["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if cfg.tie_embeddings:
        hf["lm_head.weight"] = embed
    else:
        hf["lm_head.weight"] = sd["output_layer.weight"][:v]
    return {k: t.contiguous() for k, t in hf.items()}


def rope_parameters(cfg: GPTModelConfig) -> dict[str, Any]:
    """HF's ``rope_parameters`` of ``cfg``: the default RoPE, or Llama-3's scaled one."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(cfg.rotary_base)}
    if cfg.rope_scaling is not None:
        params = {**params, "rope_type": "llama3", **cfg.rope_scaling.model_dump()}
    return params


def hf_config(cfg: GPTModelConfig, **token_ids: Any) -> PretrainedConfig:
    """The HF config of the same function: RoPE, RMS eps, GQA, tying, qkv bias, QK-norm."""
    common: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.query_groups,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.norm_epsilon,
        "rope_parameters": rope_parameters(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_method_std,
        "attention_dropout": 0.0,
        **token_ids,
    }
    if cfg.hf_architecture == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    if cfg.hf_architecture == "qwen3":
        return Qwen3Config(use_sliding_window=False, attention_bias=cfg.add_qkv_bias, **common)
    return LlamaConfig(attention_bias=cfg.add_qkv_bias, mlp_bias=False, **common)


def _token_ids(tokenizer: Any) -> dict[str, Any]:
    if tokenizer is None:
        return {}
    return {
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
        "pad_token_id": getattr(tokenizer, "pad_token_id", None),
    }


def build_hf_model(
    state_dicts: StateDict | Sequence[StateDict] | Sequence[Sequence[StateDict]],
    cfg: GPTModelConfig,
    tokenizer: Any = None,
) -> PreTrainedModel:
    """The HF model (fp32, eval mode) holding exactly the Megatron weights."""
    hf_sd = mcore_to_hf_state_dict(merge_state_dicts(state_dicts), cfg)
    config = hf_config(cfg, **_token_ids(tokenizer))
    cls = HF_CLASSES[cfg.hf_architecture]
    with torch.device("meta"):
        model = cls(config)
    model.load_state_dict(hf_sd, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) were created on meta: rebuild them on CPU.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval()


def export_to_hf(
    state_dicts: StateDict | Sequence[StateDict] | Sequence[Sequence[StateDict]],
    cfg: GPTModelConfig,
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write an HF Llama/Qwen2/Qwen3 ForCausalLM directory (safetensors) from mcore weights.

    `state_dicts`: one `GPTModel.state_dict()`, a list of them over TP ranks, or a list
    over pipeline stages of lists over TP ranks (see `gather_state_dicts_for_export`).
    """
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only {cfg.vocab_size}")
    model = build_hf_model(state_dicts, cfg, tokenizer).to(dtype)
    model.config.dtype = dtype
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def gather_state_dicts_for_export(model: torch.nn.Module) -> list[list[dict[str, torch.Tensor]]] | None:
    """Collective over this rank's model-parallel group: returns [pp][tp] CPU state dicts on
    the group's first rank, None elsewhere. Every rank of the group must call it."""
    from megatron.core import parallel_state

    # A copy, not views of the live parameters: training may go on after the gather.
    sd = {k: v.clone() for k, v in _clean(model.state_dict()).items()}
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    entry = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
        sd,
    )
    if tp * pp == 1 or not dist.is_initialized():
        return [[sd]]
    gathered = dist.gather_objects(entry, group=parallel_state.get_model_parallel_group())
    if gathered is None:
        return None
    grid: list[list[dict[str, torch.Tensor]]] = [[{} for _ in range(tp)] for _ in range(pp)]
    for pp_rank, tp_rank, shard in gathered:
        grid[pp_rank][tp_rank] = shard
    return grid


def export_hf_dir(
    model: torch.nn.Module, cfg: GPTModelConfig, tokenizer: Any, out: Path, is_main: bool
) -> Path:
    """Collective: gather the model-parallel shards; rank 0 writes the HF directory ``out``
    whole or not at all (:func:`slingshot.io.atomic_dir`: a full disk raises the
    DiskFullError naming ``out`` and leaves nothing half-written)."""
    grid = gather_state_dicts_for_export(model)
    if is_main:
        assert grid is not None
        with atomic_dir(out) as tmp:
            export_to_hf(grid, cfg, tmp, tokenizer)
    dist.barrier()
    return out
