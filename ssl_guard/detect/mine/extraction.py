"""Step 5: a group's pattern, cut out where its hosts agree.

The seed is the region where the group's two most strongly agreeing images agree (step 3). It is
matched in every image; around the matches of the hosts, wider windows are stacked, and the
pattern is the largest block whose pixels agree across hosts (their median absolute deviation is
small) while the surroundings, host content, do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_guard.detect.mine.edits import as_float, smooth


@dataclass
class Pattern:
    """A pattern: template (3, h, w) float in [0, 1]; its hosts (rows) and their boxes (H, 4)
    x0, y0, x1, y1 in scan pixels."""

    template: torch.Tensor
    hosts: np.ndarray
    boxes: np.ndarray


def seed_box(size: int, x: float, y: float, box: np.ndarray) -> tuple[int, int, int, int]:
    """`box` (relative to the keypoint at x, y) in image pixels, x0, y0, x1, y1, clipped to the image."""
    x0, y0 = int(np.clip(round(x) + box[0], 0, size)), int(np.clip(round(y) + box[1], 0, size))
    x1, y1 = int(np.clip(round(x) + box[2], 0, size)), int(np.clip(round(y) + box[3], 0, size))
    return x0, y0, x1, y1


def seed_template(images: np.ndarray, row: int, x: float, y: float, box: np.ndarray) -> torch.Tensor | None:
    """The pixels of image `row` inside `box` (relative to the keypoint at x, y, `seed_box`);
    None when the agreeing region is thinner than 3 px."""
    x0, y0, x1, y1 = seed_box(images.shape[-1], x, y, box)
    if min(x1 - x0, y1 - y0) < 3:
        return None
    return as_float(images[row : row + 1, :, y0:y1, x0:x1])[0].contiguous()


def _crop(images: torch.Tensor, y: np.ndarray, x: np.ndarray, size: int) -> torch.Tensor:
    """(B, 3, size, size) windows with top-left (y, x), borders replicated."""
    padded = F.pad(images, (size,) * 4, mode="replicate")
    return torch.stack([padded[i, :, yy + size : yy + 2 * size, xx + size : xx + 2 * size] for i, (yy, xx) in enumerate(zip(y.tolist(), x.tolist()))])


def refine(images: np.ndarray, hosts: np.ndarray, corners: np.ndarray, template: torch.Tensor, copy_of: int | None = None) -> torch.Tensor | None:
    """Grow or shrink `template` to the block its hosts share.

    Args:
        hosts: rows matching the template; corners: (H, 2) y, x of each match's top-left.
        copy_of: the index (into `hosts`) of one host whose own pixels over the block are returned
            instead of the median. For hosts stacked at whole-pixel offsets that are only known
            to within a pixel, the median of a fine pattern is a blurred copy that matches none of
            the sharp ones.
    Returns:
        the median of the hosts' pixels over the shared block, or None when the hosts agree as
        much around the template as on it (no pasted block: a natural texture or background) or
        the shared block is wider than half the image.
    """
    _, h, w = template.shape
    pad = max(h, w)
    wide_h, wide_w = h + 2 * pad, w + 2 * pad
    size = max(wide_h, wide_w)
    stack = _crop(as_float(images[hosts]), corners[:, 0] - pad, corners[:, 1] - pad, size)[:, :, :wide_h, :wide_w]
    median = stack.median(dim=0).values
    # agreement is read on lightly smoothed pixels, as in step 3: copies resampled at different
    # sub-pixel phases and JPEG-coded in different hosts differ pixel by pixel at the pattern's
    # sharp edges, not after a 3 x 3 box blur
    smoothed = smooth(stack)
    deviation = (smoothed - smoothed.median(dim=0).values).abs().mean(dim=1).median(dim=0).values  # (wide_h, wide_w)
    inner = deviation[pad : pad + h, pad : pad + w].median()
    ring = torch.cat([deviation[:2].flatten(), deviation[-2:].flatten(), deviation[:, :2].flatten(), deviation[:, -2:].flatten()]).median()
    if ring <= 2 * inner:
        return None
    consistent = (deviation < (inner + ring) / 2).numpy()
    box = block_around(consistent, (pad, pad, pad + w, pad + h))
    if box is None:
        return None
    x0, y0, x1, y1 = box
    if max(x1 - x0, y1 - y0) > images.shape[-1] // 2:
        # wider than half the image: a whole-image repeat or a shared background, not a pasted
        # patch (the threat model's patches are at most a quarter of the side)
        return None
    source = median if copy_of is None else stack[copy_of]
    return source[:, y0:y1, x0:x1].contiguous()


def block_around(consistent: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """Grow `box` (x0, y0, x1, y1) while a new row or column is mostly consistent, then shrink
    it while a border row or column is mostly inconsistent. None when under 4 px or under 60%
    consistent."""
    x0, y0, x1, y1 = box
    rows, cols = consistent.shape

    def share(region: np.ndarray) -> float:
        return float(region.mean()) if region.size else 0.0

    changed = True
    while changed:
        changed = False
        if y0 > 0 and share(consistent[y0 - 1, x0:x1]) > 0.5:
            y0, changed = y0 - 1, True
        if y1 < rows and share(consistent[y1, x0:x1]) > 0.5:
            y1, changed = y1 + 1, True
        if x0 > 0 and share(consistent[y0:y1, x0 - 1]) > 0.5:
            x0, changed = x0 - 1, True
        if x1 < cols and share(consistent[y0:y1, x1]) > 0.5:
            x1, changed = x1 + 1, True
    for _ in range(rows + cols):
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
