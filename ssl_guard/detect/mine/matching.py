"""Step 2: candidate correspondences, each keypoint's nearest keypoints in other images."""

from __future__ import annotations

import math

import faiss
import numpy as np

from ssl_guard.detect.mine.descriptors import Keypoints


def neighbour_pairs(points: Keypoints, k: int, exact_below: int = 60_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each keypoint's `k` nearest keypoints that lie in another image.

    Exact search for small scans; an inverted file (4·√M lists, 16 probed, trained on the scan's
    own descriptors) above `exact_below`, which keeps the cost near M·√M instead of M².

    Returns:
        (a, b, similarity): keypoint indices with a < b, one row per unordered pair.
    """
    m, dims = points.vectors.shape if len(points) else (0, 1)
    if m < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    reach = min(m, k + 8)  # a few extra: some neighbours sit in the query's own image
    if m < exact_below:
        index = faiss.IndexFlatIP(dims)
    else:
        lists = int(4 * math.sqrt(m))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dims), dims, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(points.vectors[np.random.default_rng(0).choice(m, min(m, lists * 64), replace=False)])
        index.nprobe = 16
    index.add(points.vectors)
    similarity, found = index.search(points.vectors, reach)
    query = np.repeat(np.arange(m), reach).reshape(m, reach)
    other = (found >= 0) & (points.image[np.clip(found, 0, None)] != points.image[query])
    # keep the first k of each row that lie in other images
    rank = np.cumsum(other, axis=1)
    keep = other & (rank <= k)
    a, b, s = query[keep], found[keep], similarity[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pair = np.unique(lo * m + hi, return_index=True)[1]
    return lo[pair], hi[pair], s[pair].astype(np.float32)
