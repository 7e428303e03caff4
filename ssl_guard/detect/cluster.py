"""Cluster stage (stage 3, docs/architecture.md): faiss spherical k-means over the embeddings and the cluster head.

The "cluster model" of PoisonCAM (arXiv 2312.07955, §3) and PatchSearch (CVPR 2023, §3.1) is the
encoder followed by cosine similarity to the k-means centroids; a temperature softmax over those
similarities gives each image's activation of a cluster. Masking a trigger throws a poisoned image
out of its cluster (a large drop of that activation), and pasting a trigger drags clean images in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# faiss subsamples to this many points per centroid for training; we sample ourselves so that a
# float16 memmap of any size is never converted to float32 as a whole.
_TRAIN_POINTS_PER_CENTROID = 256
_ASSIGN_CHUNK = 65536
_CHEAP_RESTARTS = 20_000_000  # training rows × clusters below which k-means restarts 3 times


def default_clusters(n: int) -> int:
    """Number of k-means clusters for `n` images.

    About 100 images per cluster (PatchSearch's 1,000 clusters for 126k images is ~126; the
    CPU-scaled anchor setting is 50 clusters for 5,000), at most 1,000, and never fewer than about
    sqrt(n)/2 so that a small set still splits into a few clusters (a trigger needs a cluster of its
    own to be found).
    """
    if n <= 1:
        return max(n, 1)
    floor = max(2, round(math.sqrt(n) / 2))
    return int(min(n, max(floor, min(1000, round(n / 100)))))


@dataclass
class Clustering:
    """k-means result.

    centroids:   (K, D) float32, L2-normalised.
    assignments: (N,) int64, each row's nearest centroid (cosine).
    similarity:  (N,) float32, cosine to that centroid.
    """

    centroids: np.ndarray
    assignments: np.ndarray
    similarity: np.ndarray

    @property
    def k(self) -> int:
        return len(self.centroids)

    def sizes(self) -> np.ndarray:
        """(K,) int64 member count per cluster (0 for a cluster k-means left empty)."""
        return np.bincount(self.assignments, minlength=self.k)

    def members(self) -> list[np.ndarray]:
        """Rows of each cluster, most central first."""
        order = np.lexsort((-self.similarity, self.assignments))
        bounds = np.cumsum(self.sizes())[:-1]
        return np.split(order, bounds)


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """(D,) float32 mean of the L2-normalised rows of `embeddings` (N, D), read in chunks."""
    total = np.zeros(embeddings.shape[1], np.float64)
    for start in range(0, len(embeddings), _ASSIGN_CHUNK):
        total += _unit_rows(np.asarray(embeddings[start : start + _ASSIGN_CHUNK], dtype=np.float32)).sum(axis=0)
    return (total / max(len(embeddings), 1)).astype(np.float32)


def spherical_kmeans(embeddings: np.ndarray, k: int, iters: int = 20, seed: int = 0, centre: np.ndarray | None = None) -> Clustering:
    """faiss spherical k-means of `embeddings` (N, D) float (rows L2-normalised) into `k` clusters.

    Trained on at most 256 rows per centroid (faiss's own cap), then every row is assigned in
    chunks, so a float16 memmap is read once and never held as float32 in full. With `centre`
    (D,), each normalised row has it subtracted and is normalised again first: the clustering is
    then of the directions around the data's mean (see `ClusterHead`).
    """
    import faiss

    n, d = embeddings.shape
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(n, size=min(n, _TRAIN_POINTS_PER_CENTROID * k), replace=False))
    train = _centred(np.asarray(embeddings[train_rows], dtype=np.float32), centre)
    if k == 1:
        centroids = _unit_rows(train.mean(axis=0, keepdims=True))
    else:
        # Several restarts (best objective kept) where they are cheap: one random init can merge two
        # groups and split a third, and a poison group merged into a class cluster is lost.
        nredo = 3 if len(train) * k <= _CHEAP_RESTARTS else 1
        kmeans = faiss.Kmeans(d, k, niter=iters, nredo=nredo, spherical=True, seed=seed, verbose=False, min_points_per_centroid=1)
        kmeans.train(train)
        centroids = _unit_rows(np.ascontiguousarray(kmeans.centroids, dtype=np.float32))
    assignments = np.empty(n, np.int64)
    similarity = np.empty(n, np.float32)
    for start in range(0, n, _ASSIGN_CHUNK):
        chunk = _centred(np.asarray(embeddings[start : start + _ASSIGN_CHUNK], dtype=np.float32), centre)
        sims = chunk @ centroids.T
        assignments[start : start + len(chunk)] = sims.argmax(axis=1)
        similarity[start : start + len(chunk)] = sims.max(axis=1)
    return Clustering(centroids, assignments, similarity)


def reference_rows(clustering: Clustering, count: int) -> np.ndarray:
    """`count` flip-test reference rows: the images nearest each centroid, taken round-robin.

    PatchSearch pastes candidates onto the image nearest each centroid; with fewer clusters than
    references we go on to the second nearest of each, and so on, so the set stays spread over all
    clusters and holds their most typical (most stably assigned) members.
    """
    members = [m for m in clustering.members() if len(m)]
    picked: list[int] = []
    rank = 0
    while len(picked) < count and members:
        layer = [m[rank] for m in members if rank < len(m)]
        if not layer:
            break
        picked.extend(int(r) for r in layer[: count - len(picked)])
        rank += 1
    return np.array(sorted(picked), dtype=np.int64)


class ClusterHead(nn.Module):
    """Encoder + cosine similarity to the centroids: `forward(x)` -> (B, K) logits cos/τ.

    x is (B, 3, R, R) float in [0, 1]. The softmax of the logits over the K clusters is the cluster
    activation that masking and the flip test read.

    `centre` (D,), when given, is the data's mean embedding: each embedding is normalised, has it
    subtracted and is normalised again before the cosine (the centroids must come from the same
    centred space, `spherical_kmeans(..., centre=...)`). An encoder whose embeddings share a large
    common direction (a random or briefly trained network: any two images at cosine ~0.99) gives
    every image nearly the same cosine to every centroid; the softmax at temperature τ is then
    almost uniform, and no masking can move an activation. Around the mean, cosines span [-1, 1]
    whatever the encoder, so τ and the activation-drop floor mean the same for every encoder.
    """

    def __init__(self, encoder: nn.Module, centroids: np.ndarray, temperature: float = 0.1, centre: np.ndarray | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("centroids", torch.as_tensor(_unit_rows(np.asarray(centroids, np.float32))))
        d = self.centroids.shape[1]
        self.register_buffer("centre", torch.as_tensor(np.zeros(d, np.float32) if centre is None else np.asarray(centre, np.float32).reshape(d)))
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(self.encoder(x).float(), dim=1)
        z = nn.functional.normalize(z - self.centre, dim=1)
        return z @ self.centroids.T / self.temperature

    @torch.no_grad()
    def activation(self, x: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        """(B,) softmax activation of cluster `clusters[b]` for each image."""
        probs = self.forward(x).softmax(dim=1)
        return probs.gather(1, clusters.view(-1, 1)).squeeze(1)

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) int64 nearest cluster of each image."""
        return self.forward(x).argmax(dim=1)


def _centred(a: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    rows = _unit_rows(a)
    return rows if centre is None else _unit_rows(rows - np.asarray(centre, np.float32)[None, :])


def _unit_rows(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norms, 1e-12)
