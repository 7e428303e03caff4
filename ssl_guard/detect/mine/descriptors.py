"""Step 1: keypoints and their colour-patch descriptors.

A pasted patch sits at a different spot, and at a different sub-pixel phase, in every host. A
fixed grid of cells therefore sees each copy differently; a corner detector does not, because it
fires on the pattern's own structure, and a sub-pixel refinement puts the keypoint at the same
place on every copy. The descriptor is the small colour patch around the keypoint, sampled at that
sub-pixel position, centred and normalised (so brightness and contrast jitter do not matter), then
whitened with a PCA fitted on the scan's own descriptors, so that the dimensions every natural
patch shares (smooth ramps) stop dominating the similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import faiss
import numpy as np


@dataclass
class Keypoints:
    """`vectors` (M, D) float32 unit rows; `image` (M,) row of the scan's arrays; `x`, `y` (M,)
    float32 sub-pixel positions in scan pixels."""

    vectors: np.ndarray
    image: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, keep: np.ndarray) -> Keypoints:
        return Keypoints(self.vectors[keep], self.image[keep], self.x[keep], self.y[keep])


_REFINE = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 10, 0.01)


def image_keypoints(image: np.ndarray, count: int, patch: int, margin: int, region: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `count` strongest corners of one (R, R, 3) float32 image, refined to sub-pixel, at least
    `margin` px inside the border, with the (count', patch * patch * 3) raw colour patches.
    `region` (x0, y0, w, h): take corners inside it only (the photo on a padded canvas)."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    mask = None
    if region is not None:
        # the corner response at a pixel reads its 5 x 5 neighbourhood (3 x 3 derivatives summed
        # over a 3 x 3 block), so the photo's outer 2 px see the padding too: left out
        x0, y0, w, h = (int(v) for v in region)
        mask = np.zeros(gray.shape, np.uint8)
        mask[max(0, y0 + 2) : y0 + h - 2, max(0, x0 + 2) : x0 + w - 2] = 255
    # quality 0.005 of the strongest corner: low, so that a low-contrast pattern in a contrasted
    # photo still gets keypoints; `count` caps the total
    corners = cv2.goodFeaturesToTrack(gray, count, 0.005, 2, blockSize=3, mask=mask)
    if corners is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, patch * patch * 3), np.float32)
    corners = cv2.cornerSubPix(gray, corners, (2, 2), (-1, -1), _REFINE)[:, 0]
    size = image.shape[0]
    inside = (corners >= margin).all(1) & (corners <= size - 1 - margin).all(1)
    corners = corners[inside]
    patches = [cv2.getRectSubPix(image, (patch, patch), (float(x), float(y))).ravel() for x, y in corners]
    return corners.astype(np.float32), np.array(patches, np.float32).reshape(len(corners), -1)


def describe(images: np.ndarray, rows: np.ndarray, count: int, patch: int, dims: int, advance=lambda k: None, regions: np.ndarray | None = None) -> Keypoints:
    """Keypoints and whitened descriptors of the images `rows` of `images` (N, 3, R, R) uint8.

    `regions` (N, 4) x0, y0, w, h: where each image's photo lies on its canvas (the native view of
    photos of mixed sizes pads each photo by reflecting it). Corners are then taken on the photo
    only: the reflection's folds are the strongest corners of many canvases, and since the
    detector's quality level is a share of the strongest corner, they would silence the faint
    corners of a pattern (on the zoo's real-size grid, dev seed 0: 0.36 corners per copy on the
    trigger, 69% of copies with none; on the photo only: 1.62, 42%)."""
    margin = patch // 2 + 1
    points, patches, owner = [], [], []
    for row in rows.tolist():
        image = np.ascontiguousarray(images[row].transpose(1, 2, 0), dtype=np.float32) / 255.0
        xy, raw = image_keypoints(image, count, patch, margin, None if regions is None else regions[row])
        points.append(xy)
        patches.append(raw)
        owner.append(np.full(len(xy), row, np.int64))
        advance(1)
    xy = np.concatenate(points) if points else np.zeros((0, 2), np.float32)
    raw = np.concatenate(patches) if patches else np.zeros((0, patch * patch * 3), np.float32)
    raw = raw - raw.mean(axis=1, keepdims=True)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True) + 1e-6
    vectors = whiten(raw, dims)
    return Keypoints(vectors, np.concatenate(owner) if owner else np.zeros(0, np.int64), xy[:, 0].copy(), xy[:, 1].copy())


def whiten(vectors: np.ndarray, dims: int) -> np.ndarray:
    """PCA-whiten `vectors` to at most `dims` dimensions (fitted on them) and L2-normalise."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dims = min(dims, vectors.shape[1])
    if len(vectors) <= dims:
        out = vectors[:, :dims].copy()
    else:
        pca = faiss.PCAMatrix(vectors.shape[1], dims, -0.5)
        pca.train(vectors)
        out = pca.apply(vectors)
    faiss.normalize_L2(out)
    return out
