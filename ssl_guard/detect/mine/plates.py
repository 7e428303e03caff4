"""Step 5b: candidate groups from smooth regions that repeat exactly (plates, gradients).

A trigger that is mostly smooth (a flat plate behind a glyph, a colour gradient, a solid square)
has corners only where it meets its host, and there the descriptors see the host: the corner
correspondences of steps 1-4 do not tie its copies together. What such a trigger does repeat is a
smooth region bounded by edges, of one size and one mean colour in every copy. Natural smooth
regions vary continuously in both: a sky or a shadow of every shade and every extent.

So each image's smooth regions are cut out (connected pixels whose neighbour differences are under
the scan's median neighbour difference: smoother than half of the scan's own pixels), described by
their mean colour and their box's height and width, and compared across images. A pasted region's
copies fall within the scan's resampling tolerance of one another in colour and within a pixel or
two in size, with almost nothing in a wider shell around them; a natural region's neighbours continue
into that shell. The burstiest clusters become candidate groups for the same verification as the
corner groups (step 7 decides; this step only proposes).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Regions:
    """Smooth regions: their image row, box (x, y, w, h in scan pixels) and mean colour (0-255)."""

    image: np.ndarray
    box: np.ndarray
    colour: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


def neighbour_difference(image: np.ndarray) -> np.ndarray:
    """(H, W) the largest absolute difference (over channels and the 4 neighbours) of each pixel
    of a (3, H, W) uint8 image."""
    x = image.astype(np.int16)
    dx = np.abs(np.diff(x, axis=2)).max(0)
    dy = np.abs(np.diff(x, axis=1)).max(0)
    out = np.zeros(x.shape[1:], np.int16)
    out[:, :-1] = np.maximum(out[:, :-1], dx)
    out[:, 1:] = np.maximum(out[:, 1:], dx)
    out[:-1] = np.maximum(out[:-1], dy)
    out[1:] = np.maximum(out[1:], dy)
    return out


def flat_step(images: np.ndarray, rows: np.ndarray) -> float:
    """The scan's median neighbour difference (levels of 255) over the images `rows`."""
    return float(np.median(np.stack([neighbour_difference(images[r]) for r in rows.tolist()])))


def smooth_regions(images: np.ndarray, rows: np.ndarray, step: float, min_side: int, max_side: int) -> Regions:
    """The compact smooth regions of each image of `rows`: 4-connected pixels with a neighbour
    difference under `step`, boxes `min_side`-`max_side` px on each side, covering at least half
    of their box (a plate with a glyph on it still does; a winding strip of sky does not)."""
    image_of, boxes, colours = [], [], []
    for row in rows.tolist():
        pixels = images[row]
        mask = (neighbour_difference(pixels) < step).astype(np.uint8)
        count, label, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        for c in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[c])
            if min_side <= w <= max_side and min_side <= h <= max_side and 2 * area >= w * h:
                inside = label[y : y + h, x : x + w] == c
                colours.append(pixels[:, y : y + h, x : x + w][:, inside].mean(1))
                image_of.append(row)
                boxes.append((x, y, w, h))
    return Regions(np.array(image_of, np.int64), np.array(boxes, np.int64).reshape(-1, 4), np.array(colours, np.float32).reshape(-1, 3))


# how far the box of one pasted region's copies varies: its border pixels blend with each host,
# so the smooth region ends a pixel inside or outside the pasted edge, on each side
SIZE_TOLERANCE = 2


def plate_groups(regions: Regions, colour_tolerance: float, min_size: int, top: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """The burstiest clusters of alike regions in different images, as candidate groups.

    Regions are compared when their boxes are within `SIZE_TOLERANCE` px in height and width.
    Among those, the mean colour is the burst axis. A region's mean over its A pixels varies
    from copy to copy by about the per-pixel tolerance / sqrt(A) (`colour_tolerance`, the scan's
    resampling tolerance, in levels); its cluster is the regions of other images within that of
    its colour (every channel), one per image, and its shell those within the per-pixel tolerance
    itself. Its burstiness is cluster / shell: pasted copies share one colour, natural regions of
    that size spread over every shade, so their shell outnumbers their cluster. Clusters of at
    least `min_size` images, burstiest first, each region used once; at most `top`.

    Returns (rows, region indices) per group, the cluster's centre region first.
    """
    # a colour at the end of the range (over- or underexposed) has no spread to be bursty against:
    # every blown-out region is the same white; and a flat template of it carries no structure
    # to verify (step 7's flat-patch rule)
    clipped = ((regions.colour > 255 - colour_tolerance) | (regions.colour < colour_tolerance)).all(1)
    kept = np.nonzero(~clipped)[0]
    if len(kept) < min_size:
        return []
    image, colour = regions.image[kept], regions.colour[kept]
    size = regions.box[kept, 2:]
    area = np.maximum(1, size.prod(1))
    close_radius = colour_tolerance / np.sqrt(area)
    # the shell as a box query: colour within the tolerance on every channel, height and width
    # within SIZE_TOLERANCE px (an L-infinity ball of radius 1 in these units), in chunks so that
    # the neighbour lists stay small on scans of tens of thousands of images
    keys = np.concatenate([colour / colour_tolerance, size / SIZE_TOLERANCE], 1)
    tree = cKDTree(keys)
    near: list[np.ndarray] = []
    ratio = np.zeros(len(kept))
    for start in range(0, len(kept), 2048):
        for k, found in enumerate(tree.query_ball_point(keys[start : start + 2048], r=1.0 + 1e-9, p=np.inf), start):
            found = np.asarray(found, np.int64)
            found = found[image[found] != image[k]]
            shell = np.unique(image[found])
            distance = np.abs(colour[found] - colour[k]).max(1)
            inside = distance <= close_radius[k]
            close = found[inside]
            # one region per other image: the closest
            order = np.argsort(distance[inside], kind="stable")
            _, first = np.unique(image[close[order]], return_index=True)
            near.append(close[order][first])
            ratio[k] = len(near[k]) / max(1, len(shell))
    used = np.zeros(len(kept), bool)
    groups: list[tuple[np.ndarray, np.ndarray]] = []
    for k in np.argsort(-ratio, kind="stable").tolist():
        if len(groups) >= top or ratio[k] == 0:
            break
        if used[k] or len(near[k]) + 1 < min_size:
            continue
        members = np.concatenate([[k], near[k][~used[near[k]]]]).astype(np.int64)
        if len(members) < min_size:
            continue
        used[members] = True
        groups.append((image[members], kept[members]))
    return groups
