"""Step 3: pixel agreement of a candidate correspondence.

Two descriptors can be alike by chance; two copies of a pasted patch agree pixel for pixel over the
whole patch. For each correspondence (keypoint p in image a, keypoint q in image b) the windows
around p and q are sampled at their sub-pixel positions, and the region of agreement is grown
from the keypoint: the connected pixels where the two (lightly smoothed) windows differ by less
than the scan's resampling tolerance.

Agreement alone is not evidence: two flat skies agree everywhere, two straight edges agree along
the whole edge. The evidence is how well the agreeing region pins the alignment down, the smaller
eigenvalue of its structure tensor (the Shi-Tomasi corner measure, summed over the region): flat
regions score 0, a lone edge scores 0 (it slides along itself), and a patch with structure in
every direction scores in proportion to how much of it agrees.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ssl_guard.detect.mine.descriptors import Keypoints
from ssl_guard.detect.mine.edits import as_float, smooth


def resampling_tolerance(images: np.ndarray, rows: np.ndarray, quantile: float = 0.75) -> float:
    """How much a half-pixel shift changes this scan's own (smoothed) pixels: the `quantile` of
    the per-pixel mean absolute difference between images and their half-pixel-shifted copies.

    Two copies of one patch aligned to within half a pixel disagree by less than this on most of
    their pixels, whatever the scan's resolution, blur and JPEG quality; it is measured, not set.
    """
    x = smooth(as_float(images[rows]))
    shifted = (x + torch.roll(x, 1, 3) + torch.roll(x, 1, 2) + torch.roll(torch.roll(x, 1, 2), 1, 3)) / 4
    diff = (smooth(x) - smooth(shifted)).abs().mean(1)[:, 2:-2, 2:-2]
    return float(torch.quantile(diff.flatten()[:: max(1, diff.numel() // 1_000_000)], quantile))


def pad_for_windows(images: torch.Tensor, half: int) -> torch.Tensor:
    """The images zero-padded for `_windows` of half-side `half`, channels last (done once per
    scan; gathering whole-pixel crops from it is a plain index)."""
    return F.pad(images, (half + 1, half + 2, half + 1, half + 2)).permute(0, 2, 3, 1).contiguous()


def _windows(padded: torch.Tensor, size: int, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, W, W) bilinear windows centred on (x, y) sub-pixel, W = 2·half + 1, with a mask of
    the pixels inside the image (outside pixels read as 0). The centres lie in the image
    (0 <= x, y <= R - 1), as keypoints do.

    The window's offsets are whole pixels, so every pixel of one window shares the same
    fractional position: the window is a blend of four integer crops of W + 1 pixels, gathered by
    index from the images (zero-padded once, `pad_for_windows`) instead of resampling each pair's whole image."""
    w = 2 * half + 1
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None, None, None], (y - y0)[:, None, None, None]
    steps = torch.arange(w + 1)
    _, height, width, channels = padded.shape
    cols = (x0.long() + 1)[:, None] + steps[None]  # padded column of offset -half, ..., half + 1
    lines = (y0.long() + 1)[:, None] + steps[None]
    flat = (rows[:, None, None] * height + lines[:, :, None]) * width + cols[:, None, :]
    crop = padded.reshape(-1, channels).index_select(0, flat.reshape(-1)).reshape(len(rows), w + 1, w + 1, channels)
    top = torch.lerp(crop[:, :w, :w], crop[:, :w, 1:], fx)
    bottom = torch.lerp(crop[:, 1:, :w], crop[:, 1:, 1:], fx)
    window = torch.lerp(top, bottom, fy).permute(0, 3, 1, 2).contiguous()
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    px, py = x[:, None] + offsets[None], y[:, None] + offsets[None]
    inside_x, inside_y = (px >= 0) & (px <= size - 1), (py >= 0) & (py <= size - 1)
    return window, inside_y[:, :, None] & inside_x[:, None, :]


def _centres(padded: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, half: int) -> torch.Tensor:
    """(n, 3) the bilinear pixel at each sub-pixel (x, y): the centre pixel of `_windows`, by the
    same arithmetic, without gathering the rest of the window."""
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    _, height, width, channels = padded.shape
    col, line = x0.long() + 1 + half, y0.long() + 1 + half
    flat = padded.reshape(-1, channels)
    at = lambda dy, dx: flat.index_select(0, (rows * height + line + dy) * width + col + dx)
    return torch.lerp(torch.lerp(at(0, 0), at(0, 1), fx), torch.lerp(at(1, 0), at(1, 1), fx), fy)


def _dilate(region: torch.Tensor) -> torch.Tensor:
    """3 x 3 dilation of a (n, H, W) bool mask (8-connected), by shifted ORs."""
    wide = region.clone()
    wide[:, :, 1:] |= region[:, :, :-1]
    wide[:, :, :-1] |= region[:, :, 1:]
    tall = wide.clone()
    tall[:, 1:] |= wide[:, :-1]
    tall[:, :-1] |= wide[:, 1:]
    return tall


def pair_agreement(images: np.ndarray, points: Keypoints, a: np.ndarray, b: np.ndarray, tolerance: float, half: int, batch: int = 4096, advance=lambda k: None) -> tuple[np.ndarray, np.ndarray]:
    """Evidence and agreeing-region box of each correspondence (points a[i], points b[i]).

    Returns:
        evidence (n,) float32, the structure tensor's smaller eigenvalue over the agreeing region
        (0 where nothing but the flat or one-directional part agrees); box (n, 4) int32, the
        box around the region's structure (x0, y0, x1, y1) relative to keypoint a.
    """
    used = np.unique(np.concatenate([points.image[a], points.image[b]])) if len(a) else np.zeros(0, np.int64)
    lookup = np.full(int(used.max()) + 1 if len(used) else 1, -1, np.int64)
    lookup[used] = np.arange(len(used))
    pixels = smooth(as_float(images[used])) if len(used) else torch.zeros((0, 3, 1, 1))
    padded, size = pad_for_windows(pixels, half), images.shape[-1]
    del pixels  # one float copy of the mined images held through the loop, not two
    px, py = torch.from_numpy(points.x), torch.from_numpy(points.y)
    w = 2 * half + 1
    # a pair whose keypoints' own pixels disagree grows no region (it starts there) and scores 0,
    # with the box of an empty region; only the others are windowed (a small margin on the
    # tolerance leaves the float rounding of the two computations to the full test)
    ia, ib = torch.from_numpy(lookup[points.image[a]]), torch.from_numpy(lookup[points.image[b]])
    live = []
    for start in range(0, len(a), 16 * batch):
        cut = slice(start, start + 16 * batch)
        centre = (_centres(padded, ia[cut], px[a[cut]], py[a[cut]], half) - _centres(padded, ib[cut], px[b[cut]], py[b[cut]], half)).abs().mean(1)
        live.append(start + np.nonzero((centre < tolerance * (1 + 1e-4)).numpy())[0])
    live = np.concatenate(live) if live else np.zeros(0, np.int64)
    evidence = np.zeros(len(a), np.float32)
    boxes = np.tile(np.array([-2, -2, 3, 3], np.int32), (len(a), 1))
    advance(len(a) - len(live))
    for start in range(0, len(live), batch):
        rows = live[start : start + batch]
        sa, sb = torch.from_numpy(a[rows]), torch.from_numpy(b[rows])
        ra, rb = ia[rows], ib[rows]
        wa, ina = _windows(padded, size, ra, px[sa], py[sa], half)
        wb, inb = _windows(padded, size, rb, px[sb], py[sb], half)
        valid = ina & inb
        agree = ((wa - wb).abs().mean(1) < tolerance) & valid
        region = torch.zeros_like(agree)
        region[:, half, half] = agree[:, half, half]
        for _ in range(w):
            grown = _dilate(region) & agree
            if torch.equal(grown, region):
                break
            region = grown
        # gradients of window a, where both neighbours are real pixels
        gx = F.pad(wa[:, :, :, 2:] - wa[:, :, :, :-2], (1, 1, 0, 0))
        gy = F.pad(wa[:, :, 2:, :] - wa[:, :, :-2, :], (0, 0, 1, 1))
        interior = ~_dilate(~valid)  # both neighbours of every gradient are real pixels
        r = (region & interior).float()
        sxx = (r * (gx * gx).sum(1)).sum((1, 2))
        syy = (r * (gy * gy).sum(1)).sum((1, 2))
        sxy = (r * (gx * gy).sum(1)).sum((1, 2))
        trace, det = sxx + syy, sxx * syy - sxy * sxy
        smaller = trace / 2 - torch.sqrt((trace * trace / 4 - det).clamp_min(0))
        evidence[rows] = smaller.clamp_min(0).numpy()
        # the seed box: where the agreeing region's structure is (gradient-weighted centre and
        # spread), not its bounding box, which takes in any flat background that also agrees
        weight = r * ((gx * gx) + (gy * gy)).sum(1)
        total = weight.sum((1, 2)).clamp_min(1e-9)
        idx = torch.arange(w, dtype=torch.float32) - half
        cx = (weight.sum(1) * idx).sum(1) / total
        cy = (weight.sum(2) * idx).sum(1) / total
        sx = ((weight.sum(1) * (idx[None] - cx[:, None]) ** 2).sum(1) / total).sqrt()
        sy = ((weight.sum(2) * (idx[None] - cy[:, None]) ** 2).sum(1) / total).sqrt()
        reach_x, reach_y = (1.5 * sx).clamp_min(2), (1.5 * sy).clamp_min(2)
        boxes[rows] = torch.stack([cx - reach_x, cy - reach_y, cx + reach_x + 1, cy + reach_y + 1], 1).round().int().numpy()
        advance(len(sa))
    return evidence, boxes
