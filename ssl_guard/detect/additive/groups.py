"""From features to patterns: neighbours, seed groups, a shared direction, and a mirrored null.

1. `neighbours`: each image's nearest images by cosine of the centred features (faiss). Copies of
   one additive signal are each other's neighbours; natural look-alikes come in pairs and small
   families.
2. `seed_order`: images ranked by the triangles among their neighbours (mutual neighbours that are
   also neighbours of each other). The poisons of one trigger form a near-clique; a photo and its
   near-duplicate do not close many triangles.
3. `grow`: from a seed and its neighbours, the shared direction is the sum of the group's features;
   every image is projected on it (a group member on the sum of the *other* members, so that no
   image votes for itself), the projections are standardised by their median and MAD, and the group
   becomes the images above the mirrored threshold. Repeat until the group is stable.
4. `mirror_threshold`: an image unrelated to the direction projects on it as often below zero as
   above; so the count of projections below -t estimates the false ones above +t. The threshold is
   the lowest t at which that estimate, plus one, is at most `fdr` of the images above it, with at
   least `min_hosts` of them (the knockoff+ rule of Barber and Candes, 2015, on the scan's own
   projections). On clean data no t qualifies and nothing is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def neighbours(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (N, k), of every row's k nearest other rows (inner product)."""
    import faiss

    index = faiss.IndexFlatIP(features.shape[1])
    index.add(features)
    k = min(k, len(features) - 1)
    sims, idx = index.search(features, k + 1)
    # the row itself is normally first; drop it wherever it is
    keep = idx != np.arange(len(features))[:, None]
    sims = np.stack([s[m][:k] for s, m in zip(sims, keep)])
    idx = np.stack([i[m][:k] for i, m in zip(idx, keep)])
    return sims.astype(np.float32), idx.astype(np.int64)


def seed_order(sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ordered by the mutual-neighbour triangles around them, ties by mean similarity."""
    n, k = idx.shape
    codes = np.sort(np.repeat(np.arange(n), k) * n + idx.ravel())

    def linked(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ab, ba = a * n + b, b * n + a
        return _member(codes, ab) & _member(codes, ba)

    a = np.repeat(idx, k, axis=1).ravel()
    b = np.tile(idx, (1, k)).ravel()
    triangles = linked(a, b).reshape(n, k * k).sum(1) / 2.0
    return np.lexsort((-sims.mean(1), -triangles))


def _member(sorted_codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    at = np.searchsorted(sorted_codes, queries)
    at = np.minimum(at, len(sorted_codes) - 1)
    return sorted_codes[at] == queries


def robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 MAD); a zero MAD falls back to the standard deviation."""
    median = float(np.median(values))
    scale = 1.4826 * float(np.median(np.abs(values - median)))
    if not scale > 0:
        scale = float(values.std()) or 1.0
    return (values - median) / scale


def mirror_threshold(z: np.ndarray, fdr: float, min_hosts: int) -> tuple[float, int, int]:
    """(threshold, images above it, mirrored count below its negative); inf when none qualifies."""
    above = np.sort(z[z > 0])[::-1]
    below = np.sort(-z[z < 0])  # ascending magnitudes of the negative side
    if len(above) < min_hosts:
        return float("inf"), 0, 0
    # for the t = r-th largest positive value: pos = r + 1, neg = negatives with magnitude >= t
    neg = len(below) - np.searchsorted(below, above, side="left")
    pos = np.arange(1, len(above) + 1)
    ok = (pos >= min_hosts) & ((neg + 1) / pos <= fdr)
    if not ok.any():
        return float("inf"), 0, 0
    r = int(np.nonzero(ok)[0].max())  # the lowest qualifying threshold
    return float(above[r]), int(pos[r]), int(neg[r])


def lookalike_ratio(z: np.ndarray, threshold: float, band: float = 0.75) -> float:
    """The images just under a pattern's threshold beyond what the mirrored null predicts there,
    per host: (positives in [band·t, t) − negatives in (−t, −band·t]) / images above t, at least 0.

    The copies of one added signal stand apart from the photos that merely resemble it, so the
    band under the threshold holds about as many positives as negatives; photos that share a
    natural property form a continuum that runs from the bulk through the threshold and fills
    it. The band is `mine`'s look-alike band (z down to 0.75 z, `scoring.null_threshold`)."""
    if not np.isfinite(threshold) or threshold <= 0:
        return 0.0
    hosts = int((z >= threshold).sum())
    positive = int(((z >= band * threshold) & (z < threshold)).sum())
    negative = int(((z <= -band * threshold) & (z > -threshold)).sum())
    return max(0.0, positive - negative) / max(hosts, 1)


@dataclass
class Group:
    """A candidate shared signal: its member rows (of the mined sample) and their direction."""

    seed: int
    members: np.ndarray
    direction: np.ndarray
    threshold: float
    hosts: int
    mirrored: int
    steps: int


def project(features: np.ndarray, direction: np.ndarray, members: np.ndarray | None = None, member_rows: np.ndarray | None = None) -> np.ndarray:
    """Projections of `features` rows on `direction` (a sum of member rows); the rows of
    `features` at `member_rows` are themselves members and are projected on the sum without them."""
    s = features @ direction
    if member_rows is not None and len(member_rows):
        s[member_rows] -= np.einsum("ij,ij->i", features[member_rows], features[member_rows])
    return s


def trimmed_similarity(features: np.ndarray, hosts: np.ndarray, exclude: np.ndarray | None = None, trim: float = 0.2) -> np.ndarray:
    """Each row's mean similarity to the `hosts` rows, the highest and lowest `trim` of them left
    out, and the (rows, hosts) pairs where `exclude` is True ignored.

    Against the sum of the hosts, a photo that merely resembles one host (its near-duplicate, the
    same scene) scores as high as a poison, because that host's own content is part of the sum. A
    poison resembles every host a little; the trimmed mean keeps that and drops the one look-alike.
    """
    sims = features @ hosts.T
    if exclude is not None:
        sims[exclude] = np.nan
    sims = np.sort(sims, axis=1)  # NaN sorts last
    counts = np.sum(~np.isnan(sims), axis=1)
    out = np.zeros(len(sims))
    for c in np.unique(counts):
        if c == 0:
            continue
        rows = counts == c
        cut = int(np.floor(trim * c))
        out[rows] = sims[rows][:, cut : max(cut + 1, c - cut)].mean(1)
    return out


def grow(features: np.ndarray, seed: int, start: np.ndarray, fdr: float, min_hosts: int, steps: int = 6) -> Group:
    """Grow the group of `seed` and its neighbours `start` to a fixed point (module docstring)."""
    members = np.unique(np.concatenate([[seed], start]))
    threshold, hosts, mirrored, step = float("inf"), 0, 0, 0
    for step in range(1, steps + 1):
        direction = features[members].sum(0)
        z = robust_z(project(features, direction, member_rows=members))
        threshold, hosts, mirrored = mirror_threshold(z, fdr, min_hosts)
        new = np.nonzero(z >= threshold)[0] if np.isfinite(threshold) else np.sort(np.argsort(-z)[: len(start) + 1])
        if np.array_equal(new, members):
            break
        members = new
    return Group(seed, members, features[members].sum(0), threshold, hosts, mirrored, step)
