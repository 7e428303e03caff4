"""Pictures for the report: PNG thumbnails, activation-map overlays, boxes and the score histogram.

numpy and PIL only (no torch), so the report can be re-rendered on a machine without the detection
stack. Images follow the scan's layout, `(3, H, W)` uint8 (channel first); `save_png` also takes
`(H, W, 3)`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ssl_guard.report.schema import Histogram

# Anchor colours of the "inferno" colormap (dark purple -> orange -> pale yellow) at evenly spaced
# positions; values in between are interpolated linearly. Perceptually ordered and readable in
# greyscale, so "hotter" is unambiguous on any screen or printout.
_INFERNO = np.array(
    [
        (0, 0, 4),
        (27, 12, 65),
        (74, 12, 107),
        (120, 28, 109),
        (165, 44, 96),
        (207, 68, 70),
        (237, 105, 37),
        (251, 155, 6),
        (247, 209, 61),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape S; NaN counts as 0) to inferno colours, shape S + (3,) uint8."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    v = np.clip(v, 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.floor(v).astype(np.int64)
    high = np.minimum(low + 1, len(_INFERNO) - 1)
    frac = (v - low)[..., None]
    rgb = _INFERNO[low] * (1.0 - frac) + _INFERNO[high] * frac
    return np.round(rgb).astype(np.uint8)


def save_png(pixels: np.ndarray, path: str | os.PathLike, scale: int = 1) -> Path:
    """Write an image as PNG at `path` (atomically; parent folders are created).

    pixels: `(3, h, w)` or `(h, w, 3)` uint8 (an array that is both reads as channel first).
    scale:  integer nearest-neighbour upscale, so that 32-64 px scan-resolution thumbnails stay
            crisp and visible in the report instead of being blurred by the browser.
    """
    hwc = _to_hwc(pixels)
    if int(scale) < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    if scale > 1:
        hwc = np.repeat(np.repeat(hwc, scale, axis=0), scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(np.ascontiguousarray(hwc), mode="RGB").save(handle, format="PNG")
            os.fchmod(handle.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def overlay_map(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an activation map over an image.

    image: `(3, R, R)` uint8, the sample at scan resolution.
    heat:  `(R, R)` float of any range (e.g. the drop in cluster activation when that pixel is
           masked, PoisonCAM's activation map); it is min-max normalised, so only its shape matters.
           A map of another size is resized bilinearly to the image's.
    alpha: weight of the colour map, 0 (image only) to 1 (map only).
    Returns `(3, R, R)` uint8: `(1 - alpha) * image + alpha * inferno(heat)`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    chw = _to_chw(image)
    h, w = chw.shape[1:]
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heat must be a 2-D map, got shape {heat.shape}")
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((w, h), Image.BILINEAR))
    low, high = float(heat.min()), float(heat.max())
    # A flat map carries no location: show it as all-cold rather than dividing by zero.
    normalised = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    colours = colormap(normalised).transpose(2, 0, 1).astype(np.float32)
    blended = (1.0 - alpha) * chw.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def draw_box(image: np.ndarray, box: Sequence[int], colour: Sequence[int] = (255, 0, 0)) -> np.ndarray:
    """Return a copy of `image` (`(3, H, W)` uint8) with the outline of `box` drawn in `colour`.

    box: `(x0, y0, x1, y1)` in pixels, exclusive end (the convention of `Detection.boxes`); it is
    clipped to the image, and a box entirely outside leaves the image unchanged. The line is 1 px
    per 64 px of image side, so it stays visible after `save_png(..., scale=...)`.
    """
    if len(box) != 4:
        raise ValueError(f"box is (x0, y0, x1, y1), got {box!r}")
    out = _to_chw(image).copy()
    h, w = out.shape[1:]
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = max(0, min(x0, x1)), min(w, max(x0, x1))
    y0, y1 = max(0, min(y0, y1)), min(h, max(y0, y1))
    if x1 <= x0 or y1 <= y0:
        return out
    t = max(1, round(min(h, w) / 64))
    c = np.asarray(colour, dtype=np.uint8).reshape(3, 1, 1)
    out[:, y0 : min(y0 + t, y1), x0:x1] = c
    out[:, max(y1 - t, y0) : y1, x0:x1] = c
    out[:, y0:y1, x0 : min(x0 + t, x1)] = c
    out[:, y0:y1, max(x1 - t, x0) : x1] = c
    return out


def histogram(scores: np.ndarray, threshold: float | None, bins: int = 40) -> Histogram:
    """Histogram of poison scores for the report.

    scores: `(N,)` float; NaN and infinite scores are left out (they have no place on the axis).
    The range spans the finite scores and, when it is finite, the threshold, so the threshold line
    always falls on the plot. An empty or constant input gives a one-unit-wide range.
    """
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}")
    values = np.asarray(scores, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    points = list(values[[values.argmin(), values.argmax()]]) if len(values) else []
    if threshold is not None and np.isfinite(threshold):
        points.append(float(threshold))
    low, high = (min(points), max(points)) if points else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return Histogram(
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        threshold=None if threshold is None else float(threshold),
    )


def _to_hwc(pixels: np.ndarray) -> np.ndarray:
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[0] == 3:
        return array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise ValueError(f"expected a (3, h, w) or (h, w, 3) image, got shape {array.shape}")


def _to_chw(pixels: np.ndarray) -> np.ndarray:
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) uint8 image, got {array.dtype} {array.shape}")
    return array
