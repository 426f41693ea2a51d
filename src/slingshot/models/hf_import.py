"""Exact Hugging Face Llama/Qwen2/Qwen3 -> Megatron-Core GPT import (the inverse of export).

``gpt_config_from_hf`` reads the architecture from an HF config (refusing by name what
Megatron's GPT cannot express exactly); ``hf_to_mcore_state_dict`` renames and fuses
the tensors into the full Megatron state dict (q/k/v fused per query group, gate/up
into linear_fc1, vocab padded); ``split_tp_shards`` cuts it into what each TP rank holds
(the inverse of ``export.merge_tp_shards``); ``load_hf_into_gpt`` loads this rank's shard
into a built model.

Vocab padding: Megatron's embedding and output layer have ``padded_vocab_size`` rows;
the rows past the HF vocab are zeros (their logits are 0 and trimmed on export).
Llama-3 RoPE scaling is exact: ``megatron_gpt`` applies Megatron's own llama3 formula
with the config's four parameters (see ``megatron_gpt._scale_rope``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slingshot.models.config import GPTModelConfig, Llama3RopeScaling
from slingshot.models.export import _GLOBAL_SHARDING, _LAYER_RE, _LAYER_SHARDING, StateDict

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


class HFImportError(ValueError):
    """An HF checkpoint that Megatron's GPT cannot represent exactly (named key or tensor)."""


def _rope(config: Any, where: str) -> tuple[float, Llama3RopeScaling | None]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        return theta, None
    if rope_type == "llama3" and config.model_type == "llama":
        fields = Llama3RopeScaling.model_fields
        return theta, Llama3RopeScaling(**{k: v for k, v in params.items() if k in fields})
    raise HFImportError(
        f"{where}: rope_parameters.rope_type {rope_type!r} is not supported for "
        f"{config.model_type} (Megatron's GPT here has 'default' and, for llama, 'llama3')"
    )


def gpt_config_from_hf(
    config: Any, seq_length: int, make_vocab_size_divisible_by: int = 128, where: str = "config.json"
) -> GPTModelConfig:
    """The GPTModelConfig of an HF LlamaConfig/Qwen2Config/Qwen3Config (training at ``seq_length``)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFImportError(f"{where}: model_type {model_type!r} is not one of {list(SUPPORTED_MODEL_TYPES)}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise HFImportError(f"{where}: hidden_act {config.hidden_act!r}: only 'silu' (SwiGLU) is supported")
    if getattr(config, "mlp_bias", False):
        raise HFImportError(
            f"{where}: mlp_bias: true is not supported (Megatron would add every linear bias)"
        )
    if getattr(config, "use_sliding_window", False):
        raise HFImportError(f"{where}: use_sliding_window: true is not supported")
    theta, scaling = _rope(config, where)
    heads = config.num_attention_heads
    return GPTModelConfig(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=heads,
        num_query_groups=getattr(config, "num_key_value_heads", None) or heads,
        kv_channels=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab_size=config.vocab_size,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        seq_length=seq_length,
        max_position_embeddings=config.max_position_embeddings,
        rotary_base=theta,
        norm_epsilon=config.rms_norm_eps,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        # Qwen2's attention always has q/k/v biases; Llama/Qwen3 when attention_bias is set.
        add_qkv_bias=model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
        init_method_std=getattr(config, "initializer_range", 0.02),
        hf_architecture=model_type,
        rope_scaling=scaling,
    )


def read_hf_state_dict(model_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of an HF directory (safetensors, sharded or not; else pytorch_model.bin),
    read without building the model."""
    from safetensors.torch import load_file

    root = Path(model_dir)
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = root / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [single] if (root / single).is_file() else []
        if files:
            out: dict[str, torch.Tensor] = {}
            for name in files:
                path = root / name
                out.update(
                    load_file(path) if name.endswith(".safetensors") else torch.load(path, weights_only=True)
                )
            return out
    raise HFImportError(f"{root}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: GPTModelConfig) -> torch.Tensor:
    """HF's q, k, v (weights or biases) -> mcore's rows grouped by query group: [q..., k, v] each."""
    ng, d = cfg.query_groups, cfg.head_dim
    rest = q.shape[1:]
    grouped = torch.cat(
        [q.reshape(ng, -1, d, *rest), k.reshape(ng, 1, d, *rest), v.reshape(ng, 1, d, *rest)], dim=1
    )
    return grouped.reshape(-1, *rest)


def _pad_vocab(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])]) if rows > t.shape[0] else t


def _take(hf: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in hf:
        raise HFImportError(f"HF checkpoint has no tensor {key!r}")
    return hf[key]


def hf_to_mcore_state_dict(
    hf: Mapping[str, torch.Tensor], cfg: GPTModelConfig, tensor_parallel_size: int = 1
) -> dict[str, torch.Tensor]:
    """HF tensors -> the full mcore state dict (local-spec names, vocab padded for the TP size)."""
    rows = cfg.padded_vocab_size(tensor_parallel_size)
    embed = _take(hf, "model.embed_tokens.weight")
    if embed.shape[0] != cfg.vocab_size:
        raise HFImportError(
            f"model.embed_tokens.weight has {embed.shape[0]} rows, vocab_size is {cfg.vocab_size}"
        )
    sd: dict[str, torch.Tensor] = {"embedding.word_embeddings.weight": _pad_vocab(embed, rows)}
    for i in range(cfg.num_layers):
        p, h = f"decoder.layers.{i}", f"model.layers.{i}"
        attn = f"{h}.self_attn"
        sd[f"{p}.input_layernorm.weight"] = _take(hf, f"{h}.input_layernorm.weight")
        sd[f"{p}.self_attention.linear_qkv.weight"] = _fuse_qkv(
            *(_take(hf, f"{attn}.{n}_proj.weight") for n in "qkv"), cfg
        )
        has_bias = f"{attn}.q_proj.bias" in hf
        if has_bias != cfg.add_qkv_bias:
            raise HFImportError(
                f"{attn}.q_proj.bias is {'' if has_bias else 'not '}there but add_qkv_bias={cfg.add_qkv_bias}"
            )
        if has_bias:
            sd[f"{p}.self_attention.linear_qkv.bias"] = _fuse_qkv(
                *(_take(hf, f"{attn}.{n}_proj.bias") for n in "qkv"), cfg
            )
        o_bias = hf.get(f"{attn}.o_proj.bias")
        if o_bias is not None and bool(o_bias.any()):
            raise HFImportError(
                f"{attn}.o_proj.bias is non-zero: Megatron's GPT has no output-projection bias"
            )
        if cfg.qk_layernorm:
            sd[f"{p}.self_attention.q_layernorm.weight"] = _take(hf, f"{attn}.q_norm.weight")
            sd[f"{p}.self_attention.k_layernorm.weight"] = _take(hf, f"{attn}.k_norm.weight")
        sd[f"{p}.self_attention.linear_proj.weight"] = _take(hf, f"{attn}.o_proj.weight")
        sd[f"{p}.pre_mlp_layernorm.weight"] = _take(hf, f"{h}.post_attention_layernorm.weight")
        sd[f"{p}.mlp.linear_fc1.weight"] = torch.cat(
            [_take(hf, f"{h}.mlp.gate_proj.weight"), _take(hf, f"{h}.mlp.up_proj.weight")]
        )
        sd[f"{p}.mlp.linear_fc2.weight"] = _take(hf, f"{h}.mlp.down_proj.weight")
    sd["decoder.final_layernorm.weight"] = _take(hf, "model.norm.weight")
    if not cfg.tie_embeddings:
        sd["output_layer.weight"] = _pad_vocab(_take(hf, "lm_head.weight"), rows)
    return sd


def _split(kind: str, t: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    if kind == "rep" or tp == 1:
        return t
    if kind == "col":
        return t.chunk(tp, dim=0)[rank]
    if kind == "row":
        return t.chunk(tp, dim=1)[rank]
    if kind == "fc1":  # each rank holds [its gate rows; its up rows]
        gate, up = t.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp)[rank], up.chunk(tp)[rank]])
    raise ValueError(kind)


def split_tp_shards(full: StateDict, tensor_parallel_size: int) -> list[dict[str, torch.Tensor]]:
    """What each TP rank holds of a full mcore state dict (inverse of ``merge_tp_shards``)."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tensor_parallel_size)]
    for key, t in full.items():
        m = _LAYER_RE.match(key)
        kind = _LAYER_SHARDING.get(m.group(2)) if m else _GLOBAL_SHARDING.get(key)
        if kind is None:
            raise KeyError(f"unsupported Megatron parameter: {key}")
        for rank, shard in enumerate(shards):
            shard[key] = _split(kind, t, tensor_parallel_size, rank).contiguous()
    return shards


# TE's spec fuses the pre-attention/pre-MLP norms into the next linear (see export's table).
_FUSED_NORMS = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


def _model_names(shard: Mapping[str, torch.Tensor], model_keys: Sequence[str]) -> dict[str, torch.Tensor]:
    keys = set(model_keys)
    out = {}
    for key, t in shard.items():
        m = _LAYER_RE.match(key)
        if key not in keys and m and m.group(2) in _FUSED_NORMS:
            key = f"decoder.layers.{m.group(1)}.{_FUSED_NORMS[m.group(2)]}"
        out[key] = t
    return out


@torch.no_grad()
def load_hf_into_gpt(model: torch.nn.Module, hf: Mapping[str, torch.Tensor], cfg: GPTModelConfig) -> None:
    """Load this TP rank's shard of the HF tensors ``hf`` into a built PP=1 GPTModel, exactly."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise ValueError("importing an HF checkpoint needs pipeline_parallel_size 1")
    tp = parallel_state.get_tensor_model_parallel_world_size()
    full = hf_to_mcore_state_dict(hf, cfg, tp)
    shard = split_tp_shards(full, tp)[parallel_state.get_tensor_model_parallel_rank()]
    shard = _model_names(shard, list(model.state_dict()))
    missing, unexpected = model.load_state_dict(shard, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise HFImportError(f"HF import does not fit the model: missing {missing}, unexpected {unexpected}")


def continued_pretraining_config(
    model_dir: str | os.PathLike[str], recipe: GPTModelConfig, tokenizer: Any
) -> GPTModelConfig:
    """The architecture of the HF checkpoint ``model_dir``, trained at the recipe's sequence
    length and vocab padding; refuses a data tokenizer that is not the checkpoint's own."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    cfg = gpt_config_from_hf(
        config, recipe.seq_length, recipe.make_vocab_size_divisible_by, where=f"{model_dir}/config.json"
    )
    if len(tokenizer) > cfg.vocab_size:
        raise HFImportError(
            f"the data tokenizer has {len(tokenizer)} tokens but {model_dir} only {cfg.vocab_size} embedding rows"
        )
    if tokenizer.get_vocab() != AutoTokenizer.from_pretrained(model_dir).get_vocab():
        raise HFImportError(
            f"the data stage's tokenizer is not the tokenizer of {model_dir}: set data.tokenizer.path to it"
        )
    return cfg
