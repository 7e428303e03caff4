"""Iterative cluster pruning (PatchSearch, CVPR 2023, §3.4): where to spend masking and flip tests.

Each round scores `per_round` random unscored images of every surviving cluster (localize, then
flip test); a cluster's score is the best of its scored images; then the lowest-scoring share of
the surviving clusters is dropped. A cluster that holds poisons keeps scoring high and is searched
deeper; the rest are abandoned after a round or two, so only about 8 images per cluster are scored
in all (2 per round over a geometric series of surviving clusters) instead of every image.

The module is pure: it takes the cluster memberships and a scoring callback and never touches a
model, so its schedule is tested on plain arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Candidate:
    """One scored image: its localized window and the evidence for it.

    box: (x0, y0, x1, y1) in scan pixels, exclusive end; score: the flip rate of the window;
    drop: the activation drop when the window is occluded; map: (R, R) activation map or None.
    """

    row: int
    cluster: int
    round: int
    box: tuple[int, int, int, int]
    score: float
    drop: float
    map: np.ndarray | None = None


# rows (n,), clusters (n,) -> n candidates (round is filled in by the search)
ScoreRows = Callable[[np.ndarray, np.ndarray], list[Candidate]]


@dataclass
class SearchResult:
    candidates: list[Candidate]
    rounds: int
    surviving_per_round: list[int] = field(default_factory=list)
    cluster_scores: dict[int, float] = field(default_factory=dict)


def clusters_to_drop(count: int, prune_fraction: float) -> int:
    """How many of `count` surviving clusters a round drops: the fraction, at least one while more
    than one survives (PatchSearch drops int(0.25 × count), which stalls below 4 clusters)."""
    if count <= 1:
        return 0
    return max(1, min(count - 1, math.floor(prune_fraction * count)))


def planned_candidates(sizes: np.ndarray, per_round: int, prune_fraction: float) -> int:
    """Upper bound on images the search scores, for progress totals and budgets.

    sizes: (K,) images per cluster. Assumes no cluster runs out of images and the largest clusters
    survive longest (the bound is then tight to within the exhaustion of small clusters).
    """
    remaining = sorted((int(s) for s in sizes if s > 0), reverse=True)
    total = 0
    while remaining:
        total += sum(min(per_round, s) for s in remaining)
        remaining = [s - per_round for s in remaining]
        drop = clusters_to_drop(len(remaining), prune_fraction)
        if len(remaining) <= 1:
            break
        remaining = remaining[: len(remaining) - drop]
        remaining = [s for s in remaining if s > 0]
    return total


def iterative_search(
    members: list[np.ndarray],
    score_rows: ScoreRows,
    per_round: int = 2,
    prune_fraction: float = 0.25,
    rng: np.random.Generator | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Run the pruning schedule over clusters with the given member rows.

    members: K arrays of row indices (one per cluster, possibly empty). `score_rows` is called once
    per round with all rows picked that round, so the caller can batch them through the model.
    `on_round(round, scored)` reports progress. Stops when one cluster is left and scored, or the
    surviving clusters have no unscored image left.
    """
    rng = rng or np.random.default_rng(0)
    queues = [list(rng.permutation(m)) for m in members]
    surviving = [c for c, m in enumerate(members) if len(m)]
    best: dict[int, float] = {}
    candidates: list[Candidate] = []
    per_round_counts: list[int] = []
    round_index = 0
    while surviving:
        rows, owners = [], []
        for c in surviving:
            for _ in range(min(per_round, len(queues[c]))):
                rows.append(int(queues[c].pop()))
                owners.append(c)
        if not rows:
            break
        per_round_counts.append(len(surviving))
        scored = score_rows(np.array(rows, np.int64), np.array(owners, np.int64))
        for cand in scored:
            cand.round = round_index
            best[cand.cluster] = max(best.get(cand.cluster, -np.inf), cand.score)
        candidates.extend(scored)
        if on_round:
            on_round(round_index, len(scored))
        round_index += 1
        if len(surviving) <= 1:
            break
        drop = clusters_to_drop(len(surviving), prune_fraction)
        # Lowest score first; ties broken at random so equal clusters are not pruned by index.
        scores = np.array([best.get(c, -np.inf) for c in surviving])
        order = np.lexsort((rng.random(len(surviving)), scores))
        keep = sorted(order[drop:])
        surviving = [surviving[i] for i in keep if queues[surviving[i]]]
    return SearchResult(candidates, round_index, per_round_counts, best)
