"""k-means, cluster head and flip-test references."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ssl_guard.detect.cluster import ClusterHead, default_clusters, mean_embedding, reference_rows, spherical_kmeans


def _blobs(per: int = 30, k: int = 4, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:k] * 3
    x = np.concatenate([c + rng.normal(0, 0.2, (per, d)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), np.repeat(np.arange(k), per)


def test_kmeans_recovers_separated_groups():
    x, labels = _blobs()
    cl = spherical_kmeans(x, 4, seed=0)
    # every true group maps to one cluster
    for g in range(4):
        assert len(set(cl.assignments[labels == g])) == 1
    assert np.allclose(np.linalg.norm(cl.centroids, axis=1), 1, atol=1e-5)
    assert sorted(cl.sizes()) == [30, 30, 30, 30]


def test_kmeans_handles_more_clusters_than_rows_and_one_cluster():
    x, _ = _blobs(per=2)
    assert spherical_kmeans(x, 50).k == len(x)
    one = spherical_kmeans(x, 1)
    assert one.k == 1 and (one.assignments == 0).all()


def test_default_clusters_scale():
    assert default_clusters(0) == 1 and default_clusters(1) == 1
    assert default_clusters(5000) == 50
    assert default_clusters(126_000) == 1000
    assert 2 <= default_clusters(40) <= 5


def test_members_are_most_central_first_and_references_spread_over_clusters():
    x, labels = _blobs()
    cl = spherical_kmeans(x, 4)
    for m in cl.members():
        assert np.all(np.diff(cl.similarity[m]) <= 1e-6)
    refs = reference_rows(cl, 8)
    assert len(refs) == 8
    assert np.bincount(cl.assignments[refs], minlength=4).tolist() == [2, 2, 2, 2]
    assert len(reference_rows(cl, 1000)) == len(x)


def test_head_assignment_matches_kmeans():
    x, _ = _blobs()
    cl = spherical_kmeans(x, 4)
    head = ClusterHead(nn.Identity(), cl.centroids, temperature=0.1)
    z = torch.from_numpy(x.astype(np.float32))
    assert (head.assign(z).numpy() == cl.assignments).all()
    act = head.activation(z, torch.from_numpy(cl.assignments))
    assert act.shape == (len(x),) and (act > 0.5).all()


def test_centred_head_gives_a_common_direction_encoder_a_usable_activation():
    """Embeddings that share one large direction (cosine ~0.99 between any two rows, as a random
    or briefly trained encoder gives) leave the plain head's softmax nearly uniform; around the
    data's mean the same clusters are read with confident activations, and assignments agree."""
    x, labels = _blobs()
    common = np.zeros(x.shape[1], np.float32)
    common[-1] = 1.0  # a direction none of the blobs uses
    squeezed = 0.08 * x.astype(np.float32) + common  # every row near the common direction
    squeezed /= np.linalg.norm(squeezed, axis=1, keepdims=True)
    plain = spherical_kmeans(squeezed, 4)
    plain_head = ClusterHead(nn.Identity(), plain.centroids, temperature=0.1)
    z = torch.from_numpy(squeezed)
    plain_act = plain_head.activation(z, torch.from_numpy(plain.assignments))
    centre = mean_embedding(squeezed)
    centred = spherical_kmeans(squeezed, 4, centre=centre)
    head = ClusterHead(nn.Identity(), centred.centroids, temperature=0.1, centre=centre)
    act = head.activation(z, torch.from_numpy(centred.assignments))
    assert float(plain_act.max()) < 0.5  # near 1/4 for every row
    assert (act > 0.5).all()
    assert (head.assign(z).numpy() == centred.assignments).all()
    # the centred clusters recover the blobs (one cluster per blob)
    for blob in np.unique(labels):
        assert len(np.unique(centred.assignments[labels == blob])) == 1
