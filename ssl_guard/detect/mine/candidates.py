"""Step 4: candidate groups, images tied by triangles of strong pairwise agreement.

Chance agreements (a black-on-white corner, a window frame) join images at random: among the
strongest pairs, two of an image's partners are almost never partners of each other. The copies
of one pasted patch agree with each other all round, so their pairs close triangles. The groups
are the connected components of the edges that lie on at least one triangle.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree


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


def group_alignment(group: np.ndarray, image_a: np.ndarray, image_b: np.ndarray, shift: np.ndarray, evidence: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The group's images aligned to one hub image by the translations their correspondences imply.

    A correspondence (keypoint at p in image a, at q in image b) says that what sits at p in a
    sits at q in b: a point x of a is at x + (q - p) in b. Along the maximum-evidence spanning
    tree of the group's correspondences (the strongest one per image pair), these translations
    chain each member to the hub, the member with the most correspondences inside the group.

    Args:
        shift: (n, 2) float, q - p (x, y) of each correspondence.

    Returns:
        hub row; members (M,) rows reached from the hub (the hub first); offsets (M, 2) float,
        x, y of each member's position of the hub's point (0, 0) (0 for the hub itself).
    """
    inside = np.nonzero(np.isin(image_a, group) & np.isin(image_b, group) & (evidence > 0))[0]
    if len(inside) == 0:
        return int(group[0]), group[:1].copy(), np.zeros((1, 2))
    local = {int(r): i for i, r in enumerate(group.tolist())}
    u = np.array([local[int(r)] for r in image_a[inside]])
    v = np.array([local[int(r)] for r in image_b[inside]])
    # the strongest correspondence per unordered image pair
    order = np.argsort(-evidence[inside], kind="stable")
    lo, hi = np.minimum(u, v)[order], np.maximum(u, v)[order]
    first = np.unique(lo * len(group) + hi, return_index=True)[1]
    best = order[first]
    m = len(group)
    weight = sp.coo_matrix((1.0 / evidence[inside][best], (u[best], v[best])), shape=(m, m)).tocsr()
    tree = minimum_spanning_tree(weight + weight.T)
    degree = np.bincount(np.concatenate([u, v]), minlength=m)
    hub = int(np.argmax(degree))
    nodes, parent = breadth_first_order(tree + tree.T, hub, directed=False, return_predecessors=True)
    step = {}
    for k in best.tolist():
        step[(int(u[k]), int(v[k]))] = shift[inside[k]]
        step[(int(v[k]), int(u[k]))] = -shift[inside[k]]
    offsets = np.zeros((m, 2))
    for node in nodes[1:].tolist():
        offsets[node] = offsets[parent[node]] + step[(int(parent[node]), node)]
    return int(group[hub]), group[nodes], offsets[nodes]
