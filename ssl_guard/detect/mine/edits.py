"""Image edits shared by the `mine` steps and its tests: fill a box, paste a template."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_float(batch: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 3, R, R) uint8 rows (a read-only memmap is fine) -> float in [0, 1] on `device`."""
    return torch.from_numpy(np.require(batch, requirements=["C", "W"])).to(device).float().div_(255.0)


def smooth(images: torch.Tensor, size: int = 3) -> torch.Tensor:
    """A box blur with replicated borders: what every pixel comparison in `mine` looks at, so that
    JPEG ringing and sub-pixel resampling do not read as disagreement."""
    return F.avg_pool2d(F.pad(images, (size // 2,) * 4, mode="replicate"), size, stride=1)


def fill_box(images: torch.Tensor, boxes: np.ndarray, fill: str = "blur") -> torch.Tensor:
    """Copies of `images` (B, 3, R, R) with each box (x0, y0, x1, y1) replaced by a heavy blur of
    the image (the surrounding colours, no pattern) or by the image's mean colour."""
    out = images.clone()
    blurred = smooth(images, max(3, (images.shape[-1] // 8) | 1)) if fill == "blur" else None
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).tolist()):
        if blurred is not None:
            out[i, :, y0:y1, x0:x1] = blurred[i, :, y0:y1, x0:x1]
        else:
            out[i, :, y0:y1, x0:x1] = images[i].mean(dim=(1, 2), keepdim=True)
    return out


def paste(images: torch.Tensor, template: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """Paste `template` (3, h, w) at a uniformly random spot of each image; returns the copies and
    the boxes (x0, y0, x1, y1)."""
    out = images.clone()
    _, h, w = template.shape
    size = images.shape[-1]
    ys = rng.integers(0, size - h + 1, len(images))
    xs = rng.integers(0, size - w + 1, len(images))
    for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist())):
        out[i, :, y : y + h, x : x + w] = template
    return out, np.stack([xs, ys, xs + w, ys + h], 1)
