"""Feature shards: any number of shards gives the features of one; done shards are reused."""

from __future__ import annotations

from pathlib import Path

import torch

from slingshot.synth.features import FeatureSpec
from slingshot.synth.shards import ShardedFeatures, extract_features, shard_bounds, shard_path


def test_sharded_features_equal_one_shard_and_are_reused(tiny_model, teacher_pairs, tmp_path):
    pairs = teacher_pairs
    spec = FeatureSpec(dim=32, seed=1, block_size=2048, batch_size=4)
    calls: list[list[int]] = []

    def sequential(task, indices, folder):
        calls.append(list(indices))
        return [task(i) for i in indices]

    one, tokens_one = extract_features(pairs, spec, tiny_model, tmp_path / "one", 1, sequential)
    three, tokens_three = extract_features(pairs, spec, tiny_model, tmp_path / "three", 3, sequential)
    torch.testing.assert_close(three, one, rtol=1e-4, atol=1e-5)  # padding width differs per batch
    assert tokens_one == tokens_three
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    # A second call reuses every complete shard; a deleted shard is the only one recomputed.
    calls.clear()
    extract_features(pairs, spec, tiny_model, tmp_path / "three", 3, sequential)
    assert calls == []
    shard_path(tmp_path / "three", 1).unlink()
    again, _ = extract_features(pairs, spec, tiny_model, tmp_path / "three", 3, sequential)
    assert calls == [[1]]
    torch.testing.assert_close(again, one, rtol=1e-4, atol=1e-5)
    # Other content in the same round dir is never mistaken for a done shard.
    other, _ = extract_features(pairs[::-1], spec, tiny_model, tmp_path / "three", 3, sequential)
    torch.testing.assert_close(other, one.flip(0), rtol=1e-4, atol=1e-5)


def test_sharded_features_keep_each_round_in_its_own_directory(tiny_model, teacher_pairs, tmp_path):
    spec = FeatureSpec(dim=16, seed=2, block_size=1024, batch_size=4)
    folders: list[Path] = []

    def sequential(task, indices, folder):
        folders.append(folder)
        return [task(i) for i in indices]

    features_of = ShardedFeatures(spec, tiny_model, tmp_path / "features", 2, sequential)
    feats, tokens = features_of(teacher_pairs[:3], 7)
    assert feats.shape == (3, 16) and tokens > 0
    assert features_of.round_dir(7) == tmp_path / "features" / "round-0007"
    assert folders == [tmp_path / "features" / "round-0007" / "submitit"]
    assert sorted(p.name for p in features_of.round_dir(7).glob("shard-*.pt")) == [
        "shard-0000.pt",
        "shard-0001.pt",
    ]
    empty, no_tokens = features_of([], 8)
    assert empty.shape == (0, 16) and no_tokens == 0 and len(folders) == 1
