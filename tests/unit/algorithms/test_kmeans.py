"""Spherical k-means on well-separated clusters, determinism, empty-cluster handling."""

import pytest
import torch

from slingshot.algorithms.kmeans import nearest_centroid, spherical_kmeans


def three_clusters(seed=0, per=30, d=8):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(d)[:3]
    labels = torch.arange(3).repeat_interleave(per)
    x = centers[labels] * (1 + torch.rand(3 * per, 1, generator=g)) + 0.05 * torch.randn(
        3 * per, d, generator=g
    )
    perm = torch.randperm(3 * per, generator=g)
    return x[perm], labels[perm], centers


def test_recovers_well_separated_clusters_up_to_permutation():
    x, labels, centers = three_clusters()
    c, assign = spherical_kmeans(x, 3, iters=20, seed=0)
    assert c.shape == (3, 8) and assign.shape == (90,) and assign.dtype == torch.int64
    torch.testing.assert_close(c.norm(dim=1), torch.ones(3))
    mapping = {}
    for true in range(3):
        found = assign[labels == true].unique()
        assert found.numel() == 1  # each true cluster maps to one label
        mapping[true] = found.item()
    assert len(set(mapping.values())) == 3  # ... and labels are distinct
    for true, lab in mapping.items():
        assert (c[lab] @ centers[true]).item() > 0.99
    assert torch.equal(nearest_centroid(x, c), assign)
    # new points near each centre go to that centre's cluster
    assert nearest_centroid(centers * 5, c).tolist() == [mapping[0], mapping[1], mapping[2]]


def test_deterministic_for_a_seed():
    x, _, _ = three_clusters(seed=3)
    a = spherical_kmeans(x, 5, seed=11)
    b = spherical_kmeans(x, 5, seed=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_duplicates_and_empty_clusters_do_not_break():
    # 4 points, 2 identical: k = 4 forces a duplicate centre -> an empty cluster gets re-seeded
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    c, assign = spherical_kmeans(x, 4, iters=5, seed=0)
    assert torch.all(torch.isfinite(c))
    torch.testing.assert_close(c.norm(dim=1), torch.ones(4))
    assert assign[0] == assign[1]
    assert torch.all((assign >= 0) & (assign < 4))


def test_errors():
    with pytest.raises(ValueError, match="k <= N"):
        spherical_kmeans(torch.randn(3, 2), 4)
    with pytest.raises(ValueError):
        nearest_centroid(torch.randn(3, 2), torch.randn(2, 3))
