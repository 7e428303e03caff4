"""`mine`: find a patch trigger as a pattern repeated across unrelated images, with no backdoored encoder.

A patch attack pastes the same small image into hundreds of photos. Neither the pattern's position
nor its hosts' content repeat, but the pattern's pixels do, near-identically. The detector works in
five steps, each reading only the scan's image cache:

1. **Descriptors.** Local descriptors are cells of an encoder's early feature map (the stem by
   default: about 11 px of receptive field at a 4 px stride, close to a patch trigger's size at
   64 px), centred on the dataset mean and L2-normalised. Only each image's most contrasted cells
   are kept: a trigger is high-contrast by construction, and flat cells repeat everywhere.
2. **Recurrence.** For every kept cell, faiss finds its nearest cells in *other* images. A trigger
   cell has a tight set of near-identical copies and then a drop, so it is scored by the gap
   between its k-th and its K-th neighbour's similarity; a natural texture repeats loosely at every
   distance and scores low. (Counting close neighbours instead favours textures: they are the most
   common cells of all.)
3. **Candidates.** The highest-gap cells are linked to their near-identical neighbours, and each
   connected group spanning enough distinct images becomes a candidate pattern.
4. **Verification** (the PoisonCAM idea, applied to the pattern's own cluster). Each candidate's
   pixels are aligned across its hosts; where they agree is the pattern, and its box. The pattern
   is accepted when (a) masking its box collapses the pattern's activation in the host images, and
   (b) pasting it onto clean images makes them join it (the flip test), and (c) it is far more
   consistent across hosts than a natural repeat (its pixel residual between hosts is small).
5. **Scoring.** Every image is scored by how well the best bank pattern matches it anywhere (a
   dense, normalised pixel residual), and flagged where the match is as close as between the
   verified hosts themselves.

Targeted attacks put every host in one semantic cluster; a benign watermark spreads over all of
them. That concentration is measured and reported for each pattern.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pydantic
import torch
import torch.nn.functional as F

from ssl_guard.detect.result import Detection, TriggerPattern

FeatureFn = Callable[[torch.Tensor], torch.Tensor]

# The descriptor network: a seeded random ResNet-18 stem (about 11 px per cell at a 4 px stride,
# a patch trigger's size at 64 px). It needs no training; the pipeline sets its resolution.
DESCRIPTOR_ENCODER = "random:resnet18?width=64&resolution=64&seed=0"


class MineConfig(pydantic.BaseModel):
    """Settings of the `mine` detector; `None` fields are derived from the dataset size."""

    model_config = pydantic.ConfigDict(extra="forbid")

    descriptor_encoder: str = pydantic.Field(DESCRIPTOR_ENCODER, description="the network whose feature cells are the descriptors")
    stage: int = pydantic.Field(0, ge=0, le=2, description="encoder stage whose cells are the descriptors")
    cells_per_image: int = pydantic.Field(12, ge=1, le=256)
    mining_images: int = pydantic.Field(20_000, ge=100, description="images sampled for mining; the rest are only scored")
    near_rank: int = pydantic.Field(8, ge=1, description="k of the near neighbour in the gap score")
    far_rank: int = pydantic.Field(48, ge=2, description="K of the far neighbour in the gap score")
    seed_fraction: float = pydantic.Field(0.02, gt=0, le=1, description="share of mined cells kept as seeds")
    link_similarity: float = pydantic.Field(0.88, gt=0, lt=1)
    min_hosts: int | None = pydantic.Field(None, ge=2, description="fewest distinct images a candidate must span")
    max_candidates: int = pydantic.Field(8, ge=1, description="candidates verified per mining round")
    seed_trials: int = pydantic.Field(6, ge=1, description="member cells tried as a candidate's seed window")
    min_round_images: int = pydantic.Field(1500, ge=100, description="smallest nested subsample mined")
    match_residual: float = pydantic.Field(0.35, gt=0, lt=1, description="normalised pixel residual below which a pattern matches")
    min_flip_rate: float = pydantic.Field(0.5, ge=0, le=1)
    min_mask_collapse: float = pydantic.Field(0.8, ge=0, le=1)
    min_separation: float = pydantic.Field(0.0, description="least gap between hosts' and clean images' activation of a pattern's cluster")
    max_lookalike_ratio: float = pydantic.Field(0.25, ge=0, description="images just above a pattern's threshold per image below it")
    flip_images: int = pydantic.Field(64, ge=4)
    prevalence_guard: float = pydantic.Field(0.2, gt=0, le=1, description="a pattern in more than this share of the data is reported, not quarantined")
    fill: str = pydantic.Field("blur", pattern="^(blur|mean)$")
    batch_size: int = pydantic.Field(256, ge=1)
    report_maps: int = pydantic.Field(48, ge=0, description="match maps kept for the report's top suspects")
    seed: int = 0

    def resolved(self, n: int) -> "MineConfig":
        """Fill the size-derived defaults for a dataset of `n` images."""
        values = self.model_dump()
        if values["min_hosts"] is None:
            # a backdoor needs tens of poisons to take; below 5 copies a repeat is a near-duplicate
            values["min_hosts"] = max(5, int(math.ceil(0.001 * min(n, self.mining_images))))
        return MineConfig(**values)


# ---------------------------------------------------------------------------------------------
# 1. Descriptors


@dataclass
class Cells:
    """The kept cells: `vectors` (M, C) float32 unit rows, `image` (M,) row index, `y`, `x` (M,)
    centre pixel of each cell in scan coordinates."""

    vectors: np.ndarray
    image: np.ndarray
    y: np.ndarray
    x: np.ndarray


def _as_float(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    # rows of a read-only memmap: np.require copies them into a writable block torch accepts
    return torch.from_numpy(np.require(batch, requirements=["C", "W"])).to(device).float().div_(255.0)


def cell_descriptors(images: np.ndarray, rows: np.ndarray, features: FeatureFn, stride: int, per_image: int, batch_size: int, device: torch.device, mean: torch.Tensor | None = None) -> tuple[Cells, torch.Tensor]:
    """The `per_image` most contrasted feature cells of each image in `rows`.

    Args:
        images: (N, 3, R, R) uint8 array (a memmap is read batch by batch).
        rows: the row indices to describe.
        features: (B, 3, R, R) float in [0, 1] -> (B, C, h, w) feature map.
        stride: input pixels per feature cell.
        mean: (C,) centring vector; estimated from the first batch when None.

    Returns:
        the `Cells` and the centring vector used.
    """
    vectors, owners, ys, xs = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        with torch.inference_mode():
            fmap = features(_as_float(images[np.sort(chunk)], device)).float()
        order = np.argsort(np.argsort(chunk))  # undo the sort used for sequential memmap reads
        fmap = fmap[torch.from_numpy(order).to(fmap.device)]
        b, c, h, w = fmap.shape
        flat = fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if mean is None:
            mean = flat.mean(dim=(0, 1))
        flat = flat - mean
        k = min(per_image, h * w)
        top = flat.norm(dim=2).topk(k, dim=1).indices  # (b, k)
        picked = torch.gather(flat, 1, top[..., None].expand(-1, -1, c))
        vectors.append(F.normalize(picked, dim=2).reshape(-1, c).cpu().numpy().astype(np.float32))
        owners.append(np.repeat(chunk, k))
        cell = top.reshape(-1).cpu().numpy()
        ys.append((cell // w) * stride + stride // 2)
        xs.append((cell % w) * stride + stride // 2)
    return Cells(np.concatenate(vectors), np.concatenate(owners), np.concatenate(ys), np.concatenate(xs)), mean


# ---------------------------------------------------------------------------------------------
# 2. Recurrence


def recurrence_gap(cells: Cells, near: int, far: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score each cell by `sim(near-th) - sim(far-th)` over its neighbours in other images.

    Returns:
        gap (M,) float32, and the neighbour lists `sims` (M, far+1) and `ids` (M, far+1) sorted by
        decreasing similarity, other images only (-1 / -inf padding where fewer exist).
    """
    m, dim = cells.vectors.shape
    depth = min(m, far + 1 + 16)  # a few extra to make up for neighbours in the same image
    index = _cell_index(cells.vectors)
    sims, ids = index.search(cells.vectors, depth)
    same = cells.image[np.clip(ids, 0, None)] == cells.image[:, None]
    sims = np.where(same | (ids < 0), -np.inf, sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, : far + 1]
    sims = np.take_along_axis(sims, order, 1)
    ids = np.where(np.isfinite(sims), np.take_along_axis(ids, order, 1), -1)
    # two scales of the same test: (near/4, far/3) catches patterns with only a handful of copies
    # per descriptor (small datasets, rare poisons), (near, far) those with dozens
    gap = np.full(m, -np.inf)
    for k_near, k_far in ((max(1, near // 4), max(2, far // 3)), (near, far)):
        near_sim = sims[:, min(k_near, sims.shape[1] - 1)]
        far_sim = sims[:, min(k_far, sims.shape[1] - 1)]
        gap = np.maximum(gap, np.where(np.isfinite(near_sim), near_sim - np.where(np.isfinite(far_sim), far_sim, -1.0), -np.inf))
    return gap.astype(np.float32), sims, ids


def _cell_index(vectors: np.ndarray):
    """Exact inner-product search for small sets; an inverted file beyond, where exact search
    grows quadratically (about 30 s for 110k cells on 2 cores) and a few missed far neighbours
    do not change which cells have tight copies."""
    import faiss

    m, dim = vectors.shape
    if m <= 20_000:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    lists = int(4 * math.sqrt(m))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    train = vectors[np.random.default_rng(0).choice(m, min(m, 64 * lists), replace=False)]
    index.train(train)
    index.add(vectors)
    index.nprobe = 16
    return index


def _nested_samples(rows: np.ndarray, rng: np.random.Generator, smallest: int) -> list[np.ndarray]:
    """`rows`, then a random quarter of it, a quarter of that, ... while at least `smallest`."""
    rounds = [rows]
    while len(rounds[-1]) // 4 >= smallest:
        rounds.append(np.sort(rng.choice(rounds[-1], len(rounds[-1]) // 4, replace=False)))
    return rounds


# ---------------------------------------------------------------------------------------------
# 3. Candidates


def candidate_groups(cells: Cells, gap: np.ndarray, sims: np.ndarray, ids: np.ndarray, seeds: int, link: float, min_hosts: int) -> list[np.ndarray]:
    """Connected groups of high-gap cells joined by near-identical links, largest span first.

    Returns:
        arrays of cell indices, one per group spanning at least `min_hosts` distinct images.
    """
    seeds = min(seeds, len(gap))
    top = np.argsort(-gap, kind="stable")[:seeds]
    top = top[np.isfinite(gap[top])]
    in_seed = np.zeros(len(gap), bool)
    in_seed[top] = True
    parent = np.arange(len(gap))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for q in top:
        for s, j in zip(sims[q], ids[q]):
            if s < link:
                break
            if in_seed[j]:
                ra, rb = root(q), root(j)
                if ra != rb:
                    parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for q in top:
        groups.setdefault(root(q), []).append(q)
    spans = [(len(set(cells.image[g].tolist())), np.array(g)) for g in groups.values()]
    spans = [(s, g) for s, g in spans if s >= min_hosts]
    spans.sort(key=lambda item: -item[0])
    return [g for _, g in spans]


# ---------------------------------------------------------------------------------------------
# Dense pixel matching (used by 4 and 5)


def match_residual(images: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Normalised residual of `template` at every position of every image.

    `residual = |P - T|^2 / |T - mean(T)|^2`, with P the image window: 0 for an exact copy, about
    1 or more for unrelated content. Not scale-invariant on purpose: an opaque pasted patch keeps
    its pixel values, while natural look-alikes only share a shape.

    Args:
        images: (B, 3, H, W) float in [0, 1].
        template: (3, h, w) float in [0, 1].

    Returns:
        (B, H - h + 1, W - w + 1) residuals.
    """
    _, th, tw = template.shape
    window_energy = F.avg_pool2d((images * images).sum(1, keepdim=True), (th, tw), stride=1) * (th * tw)
    cross = F.conv2d(images, template[None])
    template_energy = (template * template).sum()
    spread = ((template - template.mean(dim=(1, 2), keepdim=True)) ** 2).sum().clamp_min(1e-6)
    return ((window_energy - 2 * cross + template_energy) / spread).squeeze(1).clamp_min(0)


def best_match(images: torch.Tensor, template: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lowest residual per image and its top-left corner: (B,), (B,), (B,)."""
    residual = match_residual(images, template)
    b, h, w = residual.shape
    value, flat = residual.reshape(b, -1).min(dim=1)
    return value, flat // w, flat % w


# ---------------------------------------------------------------------------------------------
# 4. Verification


@dataclass
class Pattern:
    """A candidate pattern: its template pixels (3, h, w) float in [0, 1], host rows and their boxes."""

    template: torch.Tensor
    hosts: np.ndarray
    boxes: np.ndarray  # (H, 4) x0, y0, x1, y1
    residuals: np.ndarray  # (H,) the template's residual in each host
    group: np.ndarray  # the seed cells it came from


def _crop(images: torch.Tensor, y: np.ndarray, x: np.ndarray, size: int) -> torch.Tensor:
    """(B, 3, size, size) windows with top-left (y, x), reflect-padded at the borders."""
    pad = size
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    return torch.stack([padded[i, :, yy + pad : yy + pad + size, xx + pad : xx + pad + size] for i, (yy, xx) in enumerate(zip(y, x))])


def extract_pattern(images: np.ndarray, cells: Cells, group: np.ndarray, config: MineConfig, device: torch.device, resolution: int) -> Pattern | None:
    """Align the group's hosts on their shared pixels and cut out the region where they agree.

    A small seed window around one of the group's cells is matched densely in each host image;
    wider windows around those matches are stacked, and the pattern is the largest
    block of pixels whose median absolute deviation across hosts is small (the hosts differ
    everywhere else). Returns None when the hosts share no consistent block.
    """
    hosts = np.unique(cells.image[group])
    host_pixels = _as_float(images[hosts], device)
    seed_size = max(6, resolution // 10)
    # try a few member cells as the seed window (a cell at the pattern's edge would carry host
    # content with it) and keep the one that most hosts reproduce
    best = None
    for centre in group[: config.seed_trials]:
        y0 = int(np.clip(cells.y[centre] - seed_size // 2, 0, resolution - seed_size))
        x0 = int(np.clip(cells.x[centre] - seed_size // 2, 0, resolution - seed_size))
        owner = int(np.searchsorted(hosts, cells.image[centre]))
        seed = host_pixels[owner, :, y0 : y0 + seed_size, x0 : x0 + seed_size]
        residual, my, mx = best_match(host_pixels, seed)
        good = (residual < config.match_residual).cpu().numpy()
        if best is None or good.sum() > best[0].sum():
            best = (good, my, mx)
    good, my, mx = best
    if good.sum() < config.min_hosts:
        return None
    # stack wider windows centred on each match, and keep the pixels that agree across hosts
    offset = max(seed_size, resolution // 6)  # room for a pattern twice the seed's size and more
    wide = seed_size + 2 * offset
    stack = _crop(host_pixels[good], my.cpu().numpy()[good] - offset, mx.cpu().numpy()[good] - offset, wide)
    median = stack.median(dim=0).values
    deviation = (stack - median).abs().mean(dim=1).median(dim=0).values  # (wide, wide)
    # the seed block is pattern and the window's outer ring mostly host content: split between
    # their typical deviations, so the cut adapts to the resampling blur and the hosts' variety
    inner = deviation[offset : offset + seed_size, offset : offset + seed_size].median()
    ring = torch.cat([deviation[:2].flatten(), deviation[-2:].flatten(), deviation[:, :2].flatten(), deviation[:, -2:].flatten()]).median()
    if ring <= 2 * inner:
        return None  # the hosts agree as much around the seed as on it: no pasted block
    consistent = (deviation < (inner + ring) / 2).cpu().numpy()
    box = _block_around(consistent, offset, offset + seed_size)
    if box is None:
        return None
    bx0, by0, bx1, by1 = box
    template = median[:, by0:by1, bx0:bx1].contiguous()
    residual, my, mx = best_match(host_pixels, template)
    residual = residual.cpu().numpy()
    keep = residual < config.match_residual
    if keep.sum() < config.min_hosts:
        return None
    h, w = by1 - by0, bx1 - bx0
    ys, xs = my.cpu().numpy()[keep], mx.cpu().numpy()[keep]
    boxes = np.stack([xs, ys, xs + w, ys + h], axis=1).astype(np.int32)
    return Pattern(template, hosts[keep], boxes, residual[keep], group)


def _block_around(consistent: np.ndarray, lo: int, hi: int) -> tuple[int, int, int, int] | None:
    """Grow the box [lo, hi)² outward while its new rows/columns stay mostly consistent; shrink
    it inward while its border is mostly inconsistent. Returns (x0, y0, x1, y1) or None."""
    x0 = y0 = lo
    x1 = y1 = hi
    size = consistent.shape[0]

    def share(region: np.ndarray) -> float:
        return float(region.mean()) if region.size else 0.0

    changed = True
    while changed:
        changed = False
        for side in ("top", "bottom", "left", "right"):
            if side == "top" and y0 > 0 and share(consistent[y0 - 1, x0:x1]) > 0.5:
                y0 -= 1; changed = True  # noqa: E702
            elif side == "bottom" and y1 < size and share(consistent[y1, x0:x1]) > 0.5:
                y1 += 1; changed = True  # noqa: E702
            elif side == "left" and x0 > 0 and share(consistent[y0:y1, x0 - 1]) > 0.5:
                x0 -= 1; changed = True  # noqa: E702
            elif side == "right" and x1 < size and share(consistent[y0:y1, x1]) > 0.5:
                x1 += 1; changed = True  # noqa: E702
    for _ in range(size):
        if y1 - y0 > 3 and share(consistent[y0, x0:x1]) < 0.4:
            y0 += 1
        elif y1 - y0 > 3 and share(consistent[y1 - 1, x0:x1]) < 0.4:
            y1 -= 1
        elif x1 - x0 > 3 and share(consistent[y0:y1, x0]) < 0.4:
            x0 += 1
        elif x1 - x0 > 3 and share(consistent[y0:y1, x1 - 1]) < 0.4:
            x1 -= 1
        else:
            break
    if share(consistent[y0:y1, x0:x1]) < 0.6 or min(x1 - x0, y1 - y0) < 4:
        return None
    return x0, y0, x1, y1


def fill_box(images: torch.Tensor, boxes: np.ndarray, fill: str) -> torch.Tensor:
    """Copies of `images` (B, 3, R, R) with each box replaced by a blur of the image or its mean.

    The fill must not itself look like a pattern: a heavy blur keeps the surrounding colours, the
    mean keeps only the average.
    """
    out = images.clone()
    if fill == "blur":
        k = max(3, (images.shape[-1] // 8) | 1)
        smooth = F.avg_pool2d(F.pad(images, (k // 2,) * 4, mode="replicate"), k, stride=1)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if fill == "blur":
            out[i, :, y0:y1, x0:x1] = smooth[i, :, y0:y1, x0:x1]
        else:
            out[i, :, y0:y1, x0:x1] = images[i].mean(dim=(1, 2), keepdim=True)
    return out


def paste(images: torch.Tensor, template: torch.Tensor, rng: np.random.Generator, stride: int = 1, phases: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Paste `template` (3, h, w) at a uniformly random spot of each image; returns copies and boxes.

    With `phases` ((P, 2) y, x offsets modulo `stride`), each spot keeps the grid phase of one of
    them, so that a feature grid meets the pasted copy as it met one of the originals.
    """
    out = images.clone()
    _, h, w = template.shape
    size = images.shape[-1]
    ys = rng.integers(0, size - h + 1, len(images))
    xs = rng.integers(0, size - w + 1, len(images))
    if phases is not None and len(phases) and stride > 1:
        chosen = phases[rng.integers(0, len(phases), len(images))]
        ys = np.clip(ys - ys % stride + chosen[:, 0], 0, size - h)
        xs = np.clip(xs - xs % stride + chosen[:, 1], 0, size - w)
    for i, (y, x) in enumerate(zip(ys, xs)):
        out[i, :, y : y + h, x : x + w] = template
    return out, np.stack([xs, ys, xs + w, ys + h], 1)


def pattern_activation(images: torch.Tensor, exemplars: torch.Tensor, features: FeatureFn, mean: torch.Tensor, per_exemplar: bool = False) -> torch.Tensor:
    """The pattern cluster's activation of each image: the best cosine between any of its cells
    and any exemplar cell of the pattern. (B, 3, R, R) -> (B,); with `per_exemplar`, the best
    cosine of each exemplar over all cells of all images instead, (M,)."""
    with torch.inference_mode():
        fmap = features(images).float()
    b, c, h, w = fmap.shape
    flat = F.normalize(fmap.permute(0, 2, 3, 1).reshape(b, h * w, c) - mean, dim=2)
    similarity = flat @ exemplars.T  # (B, h*w, M)
    return similarity.amax(dim=(0, 1)) if per_exemplar else similarity.amax(dim=(1, 2))


def inset(boxes: np.ndarray, margin: int) -> np.ndarray:
    """Boxes shrunk by `margin` pixels on each side, never below 1 px."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    return np.stack([np.minimum(x0 + margin, cx), np.minimum(y0 + margin, cy), np.maximum(x1 - margin, cx + 1), np.maximum(y1 - margin, cy + 1)], 1)


def box_cells(images: torch.Tensor, boxes: np.ndarray, features: FeatureFn, mean: torch.Tensor) -> torch.Tensor:
    """Centred, normalised feature cells whose centres fall inside each image's box: (M, C)."""
    with torch.inference_mode():
        fmap = features(images).float()
    b, c, h, w = fmap.shape
    stride = images.shape[-1] // w
    centres = torch.arange(h, device=fmap.device) * stride + stride // 2
    picked = []
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        rows = ((centres >= y0) & (centres < y1)).nonzero().flatten()
        cols = ((centres >= x0) & (centres < x1)).nonzero().flatten()
        if len(rows) and len(cols):
            cell = fmap[i][:, rows][:, :, cols].reshape(c, -1).T
            picked.append(F.normalize(cell - mean, dim=1))
    return torch.cat(picked) if picked else torch.zeros((0, c), device=fmap.device)


def verify(pattern: Pattern, images: np.ndarray, clean_pool: np.ndarray, features: FeatureFn, mean: torch.Tensor, config: MineConfig, device: torch.device, rng: np.random.Generator) -> dict[str, float]:
    """Masking and flip tests of one pattern, in its own descriptor cluster (PoisonCAM's idea).

    The pattern's cluster is made of the feature cells inside the box of half of the hosts (every
    grid offset at which the pattern met the grid is represented), less the cells that clean images
    also hold. Its activation of an image is the best cosine of any of the image's cells to the
    cluster. The other half of the hosts and a clean pool are measured against it; the cluster's
    boundary lies halfway between the held-out hosts' typical activation and the clean images' 95th
    percentile.

    Returns the evidence: `mask_collapse` (share of held-out hosts that fall out of the cluster
    once the box is filled), `flip_rate` (share of clean images that join it once the pattern is
    pasted in), `separation` of hosts from clean images, and the base rates.
    """
    hosts = pattern.hosts[: 2 * config.flip_images]
    order = np.argsort(hosts)
    hosts, boxes = hosts[order], pattern.boxes[: 2 * config.flip_images][order]
    half = rng.permutation(len(hosts))
    build, held = np.sort(half[: (len(hosts) + 1) // 2]), np.sort(half[(len(hosts) + 1) // 2 :])
    build_pixels = _as_float(images[hosts[build]], device)
    exemplars = box_cells(build_pixels, inset(boxes[build], 2), features, mean)
    prune_pool, test_pool = clean_pool[: len(clean_pool) // 2], clean_pool[len(clean_pool) // 2 :]
    if len(prune_pool) and len(exemplars):
        generic = pattern_activation(_as_float(images[np.sort(prune_pool)], device), exemplars, features, mean, per_exemplar=True)
        exemplars = exemplars[generic < config.link_similarity]
    if len(exemplars) == 0 or len(held) == 0 or len(test_pool) == 0:
        return {"exemplars": float(len(exemplars)), "mask_collapse": 0.0, "flip_rate": 0.0, "separation": 0.0, "activation_drop": 0.0, "flip_base_rate": 0.0}
    held_pixels = _as_float(images[hosts[held]], device)
    before = pattern_activation(held_pixels, exemplars, features, mean)
    after = pattern_activation(fill_box(held_pixels, boxes[held], config.fill), exemplars, features, mean)
    clean = _as_float(images[np.sort(test_pool[: config.flip_images])], device)
    base = pattern_activation(clean, exemplars, features, mean)
    stride = images.shape[-1] // features(clean[:1]).shape[-1]
    phases = np.stack([boxes[build, 1] % stride, boxes[build, 0] % stride], 1)
    pasted, _ = paste(clean, pattern.template, rng, stride, phases)
    flipped = pattern_activation(pasted, exemplars, features, mean)
    host_level = float(before.median())
    clean_level = float(torch.quantile(base, 0.95))
    boundary = (host_level + clean_level) / 2
    return {
        "exemplars": float(len(exemplars)),
        "separation": host_level - clean_level,
        "boundary": boundary,
        "mask_collapse": float((after < boundary).float().mean()),
        "activation_drop": float((before - after).mean()),
        "flip_rate": float(((flipped >= boundary) & (base < boundary)).float().mean()),
        "flip_base_rate": float((base >= boundary).float().mean()),
    }


# ---------------------------------------------------------------------------------------------
# 5. Scoring


def residuals(images: np.ndarray, rows: np.ndarray, templates: list[torch.Tensor], batch_size: int, device: torch.device, advance: Callable[[int], None] = lambda k: None) -> tuple[np.ndarray, np.ndarray]:
    """Best residual of each template in each of the given images.

    Templates of one size share the window-energy pass and one stacked convolution.

    Returns:
        residual (len(rows), T) float32 and top-left corner (len(rows), T, 2) int32 as (y, x).
    """
    out = np.full((len(rows), len(templates)), np.inf, np.float32)
    corner = np.zeros((len(rows), len(templates), 2), np.int32)
    by_size: dict[tuple[int, int], list[int]] = {}
    for t, template in enumerate(templates):
        by_size.setdefault(tuple(template.shape[1:]), []).append(t)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pixels = _as_float(images[chunk], device)
        for (th, tw), members in by_size.items():
            stack = torch.stack([templates[t] for t in members])  # (T, 3, h, w)
            energy = F.avg_pool2d((pixels * pixels).sum(1, keepdim=True), (th, tw), stride=1) * (th * tw)
            cross = F.conv2d(pixels, stack)  # (B, T, H', W')
            t_energy = (stack * stack).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
            spread = ((stack - stack.mean(dim=(2, 3), keepdim=True)) ** 2).sum(dim=(1, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
            residual = ((energy - 2 * cross + t_energy) / spread).clamp_min(0)
            b, nt, h, w = residual.shape
            value, flat = residual.reshape(b, nt, -1).min(dim=2)
            out[start : start + len(chunk), members] = value.cpu().numpy()
            corner[start : start + len(chunk), members, 0] = (flat // w).cpu().numpy()
            corner[start : start + len(chunk), members, 1] = (flat % w).cpu().numpy()
        advance(len(chunk))
    return out, corner


def match_maps(images: np.ndarray, rows: np.ndarray, templates: list[torch.Tensor], which: np.ndarray, thresholds: np.ndarray, device: torch.device) -> dict[int, np.ndarray]:
    """Where in each image its best pattern matches: row -> (R, R) float16 in [0, 1], 1 where the
    window centred there is an exact copy, 0 at twice the pattern's threshold and beyond."""
    maps: dict[int, np.ndarray] = {}
    for row in rows.tolist():
        t = int(which[row])
        template = templates[t]
        residual = match_residual(_as_float(images[row : row + 1], device), template)[0]
        heat = (1.0 - residual / (2 * float(thresholds[t]))).clamp(0, 1)
        h, w = template.shape[1:]
        full = torch.zeros(images.shape[-2:], device=heat.device)
        full[h // 2 : h // 2 + heat.shape[0], w // 2 : w // 2 + heat.shape[1]] = heat
        maps[int(row)] = full.cpu().numpy().astype(np.float16)
    return maps


def _all_matches(pattern: Pattern, rows: np.ndarray, residual: np.ndarray, corner: np.ndarray, threshold: float) -> Pattern:
    """The pattern with every row matching below `threshold` as a host (boxes from the match)."""
    keep = residual < threshold
    if keep.sum() < len(pattern.hosts):
        return pattern
    h, w = pattern.template.shape[1:]
    ys, xs = corner[keep, 0], corner[keep, 1]
    boxes = np.stack([xs, ys, xs + w, ys + h], axis=1).astype(np.int32)
    return Pattern(pattern.template, rows[keep], boxes, residual[keep], pattern.group)


def calibrate(host_residuals: np.ndarray, sample_residuals: np.ndarray, ceiling: float) -> tuple[float, float]:
    """A pattern's match threshold and how cleanly it separates its copies from everything else.

    The threshold is a multiple of the residual between verified hosts (copies of one pasted
    patch match each other as well as the hosts do, whatever the resampling), capped at `ceiling`.
    The ratio returned counts the images just above the threshold (up to twice it) per image below it:
    near 0 for a pasted patch, whose copies sit apart from all natural content; 1 or more for a
    natural look-alike, whose matches form a continuum.
    """
    threshold = float(min(ceiling, max(0.08, 2.5 * float(np.quantile(host_residuals, 0.75)))))
    below = int((sample_residuals < threshold).sum())
    near = int(((sample_residuals >= threshold) & (sample_residuals < 2 * threshold)).sum())
    return threshold, near / max(below, 1)


# ---------------------------------------------------------------------------------------------
# The detector


def prevalence_guard(flagged: np.ndarray, which: np.ndarray, patterns: int, limit: float) -> tuple[np.ndarray, list[float], list[str]]:
    """Unflag the samples of any pattern found in more than `limit` of the data (the decide stage, docs/architecture.md).

    A "trigger" carried by a large share of a dataset is a property of the data (a watermark, a
    frame, a logo), not a poison: it is reported, and quarantining half the data is left to a
    person's decision.

    Returns:
        the new flags (N,) bool, each pattern's flagged share, and one warning per guarded pattern.
    """
    flagged = flagged.copy()
    shares, warnings = [], []
    for t in range(patterns):
        share = float((flagged & (which == t)).mean()) if len(flagged) else 0.0
        shares.append(share)
        if share > limit:
            warnings.append(f"pattern {t} matches {share:.0%} of the data, above the prevalence guard of {limit:.0%}: a property of the data, not quarantined")
            flagged &= which != t
    return flagged, shares, warnings


def host_concentration(hosts: np.ndarray, semantic: np.ndarray, rng: np.random.Generator, draws: int = 200) -> dict[str, float]:
    """How concentrated a pattern's hosts are in one semantic cluster, against chance.

    The targeted SSL-Backdoor attack draws every poison from one class, so its hosts pile up in the
    clusters of that class; an untargeted attack or a benign watermark spreads them like any random
    sample. `cluster_share` is the share of hosts in their most common cluster; `chance_share` the
    99th percentile of the same statistic over `draws` random samples of as many images;
    `targeted` is 1.0 when the hosts beat it.
    """
    def top_share(rows: np.ndarray) -> float:
        return float(np.bincount(semantic[rows]).max() / max(1, len(rows)))

    share = top_share(hosts)
    chance = float(np.quantile([top_share(rng.choice(len(semantic), len(hosts), replace=False)) for _ in range(draws)], 0.99))
    return {"cluster_share": share, "chance_share": chance, "targeted": float(share > chance)}


def detect_mine(
    images: np.ndarray,
    features: FeatureFn,
    stride: int,
    semantic: np.ndarray | None = None,
    config: MineConfig | None = None,
    device: str | torch.device = "cpu",
    progress=None,
) -> Detection:
    """Run the `mine` detector over a scan's image cache.

    Args:
        images: (N, 3, R, R) uint8 (np.memmap), the scan-resolution images.
        features: (B, 3, R, R) float in [0, 1] -> (B, C, h, w) local feature map (an encoder stage).
        stride: input pixels per feature cell.
        semantic: (N,) int semantic cluster of each image (k-means of the global embeddings), for
            the targeted / untargeted report; None skips it.
        progress: optional rich Progress; one task per stage.

    Returns:
        a `Detection` whose scores are `1 - residual` of the best bank pattern (higher = closer).
    """
    device = torch.device(device)
    n = len(images)
    config = (config or MineConfig()).resolved(n)
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    if n == 0:
        return Detection.empty("mine", 0)
    resolution = images.shape[-1]
    rng = np.random.default_rng(config.seed)

    def stage(name: str, total: int):
        task = progress.add_task(name, total=total) if progress is not None else None
        return (lambda k: progress.advance(task, k)) if task is not None else (lambda k: None)

    # 1. descriptors of a sample
    clock = time.perf_counter()
    mined = np.sort(rng.choice(n, min(n, config.mining_images), replace=False))
    advance = stage("mine: descriptors", len(mined))
    cells_parts, mean = [], None
    for start in range(0, len(mined), config.batch_size * 8):
        part, mean = cell_descriptors(images, mined[start : start + config.batch_size * 8], features, stride, config.cells_per_image, config.batch_size, device, mean)
        cells_parts.append(part)
        advance(len(mined[start : start + config.batch_size * 8]))
    cells = Cells(*(np.concatenate([getattr(p, f) for p in cells_parts]) for f in ("vectors", "image", "y", "x")))
    seconds["descriptors"] = time.perf_counter() - clock

    # 2-3. recurrence and candidates, on nested subsamples: the gap score needs a trigger's copies
    # to be fewer than `far_rank` per descriptor, which holds at some subsample size whatever the
    # poison rate (all images for rare poisons, a quarter or a sixteenth for frequent ones)
    clock = time.perf_counter()
    groups: list[np.ndarray] = []
    rounds = _nested_samples(mined, rng, config.min_round_images)
    advance = stage("mine: recurrence", len(rounds))
    for subset in rounds:
        keep = np.nonzero(np.isin(cells.image, subset))[0]
        part = Cells(cells.vectors[keep], cells.image[keep], cells.y[keep], cells.x[keep])
        gap, sims, ids = recurrence_gap(part, config.near_rank, config.far_rank)
        seeds = max(200, int(config.seed_fraction * len(gap)))
        found = candidate_groups(part, gap, sims, ids, seeds, config.link_similarity, max(3, int(config.min_hosts * len(subset) / len(mined))))
        groups.extend(keep[g] for g in found[: config.max_candidates])
        advance(1)
    seconds["recurrence"] = time.perf_counter() - clock

    # 4. verification
    clock = time.perf_counter()
    advance = stage("mine: verify", len(groups))
    accepted: list[tuple[Pattern, dict[str, float], float]] = []  # pattern, evidence, threshold
    candidates_report: list[dict] = []
    covered: set[int] = set()
    for group in groups:
        advance(1)
        group_hosts = np.unique(cells.image[group])
        if len(covered.intersection(group_hosts.tolist())) > 0.5 * len(group_hosts):
            continue  # another part of a pattern already in the bank
        pattern = extract_pattern(images, cells, group, config, device, resolution)
        if pattern is None:
            candidates_report.append({"hosts": float(len(group_hosts)), "verdict": "no consistent pixels"})
            continue
        # calibrate on the mined sample first: every close match is a host, so the masking and
        # flip tests see all the copies, not only those the seed group happened to link
        sample_residual, corner = residuals(images, mined, [pattern.template], config.batch_size, device)
        threshold, lookalikes = calibrate(pattern.residuals, sample_residual[:, 0], config.match_residual)
        pattern = _all_matches(pattern, mined, sample_residual[:, 0], corner[:, 0], threshold)
        hosts = set(pattern.hosts.tolist())
        clean_pool = np.array([i for i in rng.permutation(mined)[: 3 * config.flip_images] if i not in hosts], dtype=np.int64)
        evidence = verify(pattern, images, clean_pool, features, mean, config, device, rng)
        evidence["hosts"] = float(len(pattern.hosts))
        evidence["host_residual"] = float(np.median(pattern.residuals))
        evidence["height"], evidence["width"] = (float(v) for v in pattern.template.shape[1:])
        evidence["threshold_residual"], evidence["lookalike_ratio"] = threshold, lookalikes
        verdict = "accepted"
        if lookalikes > config.max_lookalike_ratio:
            verdict = "rejected: natural look-alikes form a continuum"
        elif evidence["separation"] < config.min_separation:
            verdict = "rejected: its cluster does not stand apart from clean images"
        elif evidence["mask_collapse"] < config.min_mask_collapse:
            verdict = "rejected: masking does not remove it"
        elif evidence["flip_rate"] < config.min_flip_rate:
            verdict = "rejected: pasting it does not reproduce it"
        if semantic is not None:
            evidence.update(host_concentration(pattern.hosts, semantic, rng))
        candidates_report.append({**evidence, "verdict": verdict})
        if verdict == "accepted":
            accepted.append((pattern, evidence, threshold))
            covered.update(hosts)
    seconds["verify"] = time.perf_counter() - clock

    # 5. score every image: residual relative to each pattern's own threshold, best pattern wins
    clock = time.perf_counter()
    if not accepted:
        detection = Detection.empty("mine", n, threshold=0.5)
        detection.warnings.append("no repeated pattern passed verification: nothing quarantined")
        detection.seconds = seconds
        detection.details = {"candidates": candidates_report, "cells": int(len(cells.image)), "mined_images": int(len(mined))}
        return detection
    advance = stage("mine: score", n)
    templates = [pattern.template for pattern, _, _ in accepted]
    thresholds = np.array([threshold for _, _, threshold in accepted], np.float32)
    residual, corner = residuals(images, np.arange(n), templates, config.batch_size, device, advance)
    # score 1 at an exact copy, 0.5 at the pattern's threshold, 0 at twice it and beyond
    relative = np.clip(1.0 - residual / (2 * thresholds[None, :]), 0.0, 1.0)
    which = relative.argmax(axis=1)
    scores = relative[np.arange(n), which].astype(np.float32)
    flagged = scores > 0.5
    y, x = corner[np.arange(n), which, 0], corner[np.arange(n), which, 1]
    sizes = np.array([t.shape[1:] for t in templates])[which]
    boxes = np.where(flagged[:, None], np.stack([x, y, x + sizes[:, 1], y + sizes[:, 0]], 1), -1).astype(np.int32)
    flagged, shares, guard_warnings = prevalence_guard(flagged, which, len(accepted), config.prevalence_guard)
    warnings.extend(guard_warnings)
    bank: list[TriggerPattern] = []
    for t, (pattern, evidence, threshold) in enumerate(accepted):
        evidence["flagged_share"] = shares[t]
        bank.append(TriggerPattern(
            pixels=(pattern.template.clamp(0, 1) * 255).round().byte().cpu().numpy(),
            host=int(pattern.hosts[0]),
            box=tuple(int(v) for v in pattern.boxes[0]),
            score=float(evidence["flip_rate"] * evidence["mask_collapse"]),
            hosts=len(pattern.hosts),
            targeted=None if semantic is None else bool(evidence["targeted"]),
            evidence=evidence,
        ))
    boxes[~flagged] = -1
    maps = match_maps(images, np.argsort(-scores, kind="stable")[: config.report_maps], templates, which, thresholds, device)
    seconds["score"] = time.perf_counter() - clock
    return Detection(
        method="mine",
        scores=scores,
        flagged=flagged,
        boxes=boxes,
        threshold=0.5,
        bank=bank,
        maps=maps,
        seconds=seconds,
        warnings=warnings,
        details={"candidates": candidates_report, "cells": int(len(cells.image)), "mined_images": int(len(mined)), "pattern_of_sample": which},
    )
