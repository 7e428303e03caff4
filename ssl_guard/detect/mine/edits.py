"""Pixel helpers shared by the `mine` steps: uint8 rows to float, and the light blur every comparison reads."""

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
