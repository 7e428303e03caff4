"""Step 4: candidate groups, images tied by triangles of strong pairwise agreement.

Chance agreements (a black-on-white corner, a window frame) join images at random: among the
strongest pairs, two of an image's partners are almost never partners of each other. The copies
of one pasted patch agree with each other all round, so their pairs close triangles. The groups
are the connected components of the edges that lie on at least one triangle.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


def triangle_groups(image_a: np.ndarray, image_b: np.ndarray, evidence: np.ndarray, n: int, budget: int, min_size: int) -> list[np.ndarray]:
    """Groups of images (sorted row arrays, largest first) from the `budget` strongest pairs.

    Args:
        image_a, image_b: the images of each correspondence; evidence: its strength.
        n: number of images; budget: strongest correspondences kept as edges.
        min_size: smallest group returned.
    """
    strongest = np.argsort(-evidence, kind="stable")[:budget]
    strongest = strongest[evidence[strongest] > 0]
    if len(strongest) == 0:
        return []
    u, v = image_a[strongest], image_b[strongest]
    graph = sp.coo_matrix((np.ones(len(u), np.float32), (u, v)), shape=(n, n)).tocsr()
    graph = ((graph + graph.T) > 0).astype(np.float32)
    closed = (graph @ graph).multiply(graph)  # edge -> number of triangles through it
    closed.eliminate_zeros()
    count, label = connected_components(closed > 0, directed=False)
    on_triangle = np.asarray((closed > 0).sum(axis=1)).ravel() > 0
    groups = [np.nonzero((label == c) & on_triangle)[0] for c in range(count)]
    groups = [g for g in groups if len(g) >= min_size]
    return sorted(groups, key=len, reverse=True)


def best_pair_in(group: np.ndarray, image_a: np.ndarray, image_b: np.ndarray, evidence: np.ndarray, top: int) -> np.ndarray:
    """Indices of the `top` strongest correspondences with both images in `group`."""
    inside = np.nonzero(np.isin(image_a, group) & np.isin(image_b, group))[0]
    return inside[np.argsort(-evidence[inside], kind="stable")[:top]]
