"""TP shard merging on synthetic Megatron-layout shards (TP=4), incl. the SwiGLU fc1 layout."""

from __future__ import annotations

import pytest
import torch

from slingshot.models.config import GPTModelConfig
from slingshot.models.export import _split_qkv, mcore_to_hf_state_dict, merge_state_dicts

CFG = GPTModelConfig(
    num_layers=1,
    hidden_size=64,
    ffn_hidden_size=96,
    num_attention_heads=8,
    num_query_groups=4,
    vocab_size=120,
    make_vocab_size_divisible_by=32,
    seq_length=16,
    add_qkv_bias=True,
)
TP = 4


def _full() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h, f, d, v = 64, 96, CFG.head_dim, CFG.padded_vocab_size(TP)
    qkv_rows = (CFG.num_attention_heads + 2 * CFG.query_groups) * d
    shapes = {
        "embedding.word_embeddings.weight": (v, h),
        "decoder.layers.0.input_layernorm.weight": (h,),
        "decoder.layers.0.self_attention.linear_qkv.weight": (qkv_rows, h),
        "decoder.layers.0.self_attention.linear_qkv.bias": (qkv_rows,),
        "decoder.layers.0.self_attention.linear_proj.weight": (h, CFG.num_attention_heads * d),
        "decoder.layers.0.pre_mlp_layernorm.weight": (h,),
        "decoder.layers.0.mlp.linear_fc1.weight": (2 * f, h),
        "decoder.layers.0.mlp.linear_fc2.weight": (h, f),
        "decoder.final_layernorm.weight": (h,),
        "output_layer.weight": (v, h),
    }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _shard(full: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor | None]:
    """What Megatron's TP rank `rank` holds for `full` (plus an ignored _extra_state)."""
    out: dict[str, torch.Tensor | None] = {}
    for k, t in full.items():
        if k.endswith("linear_fc1.weight"):  # each rank: [its gate rows; its up rows]
            gate, up = t.chunk(2)
            out[k] = torch.cat([gate.chunk(TP)[rank], up.chunk(TP)[rank]])
        elif k.endswith(("linear_proj.weight", "linear_fc2.weight")):
            out[k] = t.chunk(TP, dim=1)[rank]
        elif t.dim() == 2 or k.endswith("qkv.bias"):  # column / vocab parallel: whole query groups
            out[k] = t.chunk(TP, dim=0)[rank]
        else:
            out[k] = t
    out["decoder.layers.0.mlp.linear_fc2._extra_state"] = None
    return out


def test_merge_inverts_megatron_sharding() -> None:
    full = _full()
    merged = merge_state_dicts([_shard(full, r) for r in range(TP)])
    assert merged.keys() == full.keys()
    for k in full:
        torch.testing.assert_close(merged[k], full[k], atol=0, rtol=0)


def test_qkv_unfused_by_query_group() -> None:
    d, nq = CFG.head_dim, CFG.num_attention_heads // CFG.query_groups
    rows = torch.arange((CFG.num_attention_heads + 2 * CFG.query_groups) * d)
    q, k, v = _split_qkv(rows, CFG)
    block = (nq + 2) * d  # one query group's rows: nq query heads, then k, then v
    assert torch.equal(q[: nq * d], torch.arange(nq * d))
    assert torch.equal(k[:d], torch.arange(nq * d, (nq + 1) * d))
    assert torch.equal(v[:d], torch.arange((nq + 1) * d, block))
    assert torch.equal(q[nq * d : nq * d + d], torch.arange(block, block + d))


def test_hf_names_shapes_and_vocab_trim() -> None:
    hf = mcore_to_hf_state_dict(merge_state_dicts([_shard(_full(), r) for r in range(TP)]), CFG)
    assert hf["model.embed_tokens.weight"].shape == (120, 64)
    assert hf["lm_head.weight"].shape == (120, 64)
    assert hf["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)  # 8 heads x d=8
    assert hf["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # 4 groups x d=8
    assert hf["model.layers.0.mlp.gate_proj.weight"].shape == (96, 64)
    assert hf["model.layers.0.self_attn.q_proj.bias"].shape == (64,)


def test_unknown_parameter_is_an_error() -> None:
    with pytest.raises(KeyError, match="unsupported"):
        merge_state_dicts({"decoder.layers.0.mlp.linear_fc1.bias": torch.ones(2)})  # no MLP biases


def test_qkv_bias_must_match_config() -> None:
    full = merge_state_dicts([_shard(_full(), r) for r in range(TP)])  # carries a qkv bias
    with pytest.raises(ValueError, match="add_qkv_bias"):
        mcore_to_hf_state_dict(full, CFG.model_copy(update={"add_qkv_bias": False}))
