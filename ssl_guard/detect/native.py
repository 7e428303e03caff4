"""The native view of a scan of mixed photo sizes, and the way back to the square cache.

The square cache resizes every photo to R x R, so a trigger pasted at a fixed pixel size reaches
the scan at a size (and aspect) that differs from photo to photo by as much as the photos do: on
photos of 256-512 px, a 2x spread that no single template matches. The native view
(`ssl_guard.data.NativeScale`) scales every photo by one factor onto a square canvas, so those
copies have one size again. A detector that reads it reports in the square cache's coordinates
(`NativeView.to_cache`), like every other detector.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from ssl_guard.data import NativeScale
from ssl_guard.detect.result import Detection


@dataclass
class NativeView:
    """`images`: (N, 3, C, C) uint8, row-aligned with the scan; `sizes`: each photo's (w, h)."""

    images: np.ndarray
    layout: NativeScale
    sizes: list[tuple[int, int]]

    def placements(self) -> np.ndarray:
        """(N, 4) x0, y0, w, h of each photo on the canvas."""
        return np.array([self.layout.placement(w, h) for w, h in self.sizes], dtype=np.float64).reshape(-1, 4)

    def boxes_to_cache(self, boxes: np.ndarray, rows: np.ndarray, resolution: int) -> np.ndarray:
        """Canvas boxes (x0, y0, x1, y1) of photos `rows` in square-cache pixels; -1 rows stay -1."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        missing = (boxes < 0).any(axis=1)
        place = self.placements()[np.asarray(rows, dtype=np.int64)]
        # a box is clipped to its photo first: the canvas's padding maps to nothing in the cache
        low, high = np.tile(place[:, :2], 2), np.tile(place[:, :2] + place[:, 2:], 2)
        boxes = np.clip(boxes, low, high)
        sx, sy = resolution / place[:, 2], resolution / place[:, 3]
        out = np.stack([(boxes[:, 0] - place[:, 0]) * sx, (boxes[:, 1] - place[:, 1]) * sy, (boxes[:, 2] - place[:, 0]) * sx, (boxes[:, 3] - place[:, 1]) * sy], 1)
        out = np.clip(np.round(out), 0, resolution).astype(np.int32)
        out[missing] = -1
        return out

    def map_to_cache(self, heat: np.ndarray, row: int, resolution: int) -> np.ndarray:
        """A (C, C) map of photo `row` on the canvas, as a (R, R) map over the square cache."""
        x0, y0, w, h = (int(v) for v in self.layout.placement(*self.sizes[row]))
        part = np.asarray(heat, dtype=np.float32)[y0 : y0 + h, x0 : x0 + w]
        return cv2.resize(part, (resolution, resolution), interpolation=cv2.INTER_LINEAR).astype(np.float16)

    def to_cache(self, detection: Detection, resolution: int) -> Detection:
        """`detection`, made on this view, with its boxes, bank boxes and maps in square-cache
        coordinates; the view's layout is recorded in its details."""
        n = len(detection.scores)
        boxes = self.boxes_to_cache(detection.boxes, np.arange(n), resolution)
        bank = [replace(p, box=tuple(int(v) for v in self.boxes_to_cache(np.array([p.box]), np.array([p.host]), resolution)[0])) for p in detection.bank]
        maps = {row: self.map_to_cache(m, row, resolution) for row, m in detection.maps.items()}
        details = {**detection.details, "native_view": {"factor": self.layout.factor, "canvas": self.layout.canvas}}
        return replace(detection, boxes=boxes, bank=bank, maps=maps, details=details)
