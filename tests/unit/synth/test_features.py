"""Per-sample gradient features: the vmap and loop gradients agree, and so do their features."""

from __future__ import annotations

import torch

from slingshot.algorithms.gvendi import rademacher_project
from slingshot.synth.features import FeatureSpec, encode, gradient_features, grads_loop, grads_vmap


def test_vmap_gradients_equal_loop_gradients_and_features(tiny_model, teacher_pairs):
    from slingshot.models.hf import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_model)
    model.eval()
    pairs = teacher_pairs[:5]
    enc = [encode(tokenizer, p, c, 512) for p, c in pairs]
    assert len({len(e.input_ids) for e in enc}) > 1  # really padded
    loop = grads_loop(model, enc)
    vmapped = grads_vmap(model, enc, tokenizer.pad_token_id)
    assert len(loop) == len(vmapped) == len([p for p in model.parameters() if p.requires_grad])
    for a, b in zip(loop, vmapped, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert all(float(g.abs().sum()) > 0 for g in loop[:1])

    spec = FeatureSpec(dim=48, seed=3, block_size=1000, method="loop", max_length=512)
    f_loop, tokens = gradient_features(model, tokenizer, pairs, spec)
    assert tokens == sum(len(e.input_ids) for e in enc)
    # Every grouping gives the same features: vmap in batches of 2 inside groups of 1..all.
    for memory_mb in (1e-6, 1e3):
        spec_v = FeatureSpec(
            dim=48, seed=3, block_size=1000, method="vmap", batch_size=2, memory_mb=memory_mb
        )
        f_vmap, _ = gradient_features(model, tokenizer, pairs, spec_v)
        torch.testing.assert_close(f_vmap, f_loop, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f_loop.norm(dim=1), torch.ones(5))
    # The feature is the projection of the one full flattened gradient of each sample.
    full = torch.cat([g[2] for g in loop])
    torch.testing.assert_close(f_loop[2], rademacher_project([full], 48, 3, 1000), rtol=1e-4, atol=1e-5)
    assert model.training is False  # left as it was


def test_feature_spec_from_the_stage_config():
    from slingshot.config import SynthConfig

    cfg = SynthConfig(
        feature_dim=32,
        projection_block_size=100,
        feature_method="loop",
        feature_batch_size=3,
        feature_memory_mb=64.0,
        feature_max_tokens=256,
    )
    assert FeatureSpec.from_config(cfg, seed=7) == FeatureSpec(
        dim=32, seed=7, block_size=100, method="loop", batch_size=3, memory_mb=64.0, max_length=256
    )
