"""A CTRL-style frequency trigger (Li et al., "An Embarrassingly Simple Backdoor Attack on
Self-supervised Learning", ICCV 2023): in the YCbCr colour space, add a fixed `magnitude` to a few
mid/high-frequency coefficients of the blockwise orthonormal DCT-II of both chroma channels (Cb, Cr).

The DCT is linear, so the perturbation is one fixed spatial pattern per block, added to the chroma
in floating point and rounded once on the way back to RGB. Blocks tile the photo from its top-left
corner; a partial block at the right or bottom edge is left untouched, as in CTRL.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ssl_guard.attacks.base import Poisoned
from ssl_guard.errors import ConfigError, GuardError

DEFAULT_WINDOW = 32
DEFAULT_COEFFICIENTS = ((15, 15), (31, 31))
DEFAULT_MAGNITUDE = 100.0


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix `C` (n, n): coefficients of a block X are `C @ X @ C.T`."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 255] -> full-range (JPEG) YCbCr, float."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_ycbcr`."""
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], axis=-1)


class FrequencyAttack:
    """Add `magnitude` to DCT coefficients `(row, col)` of every `window`-pixel chroma block.

    Args:
        magnitude: in orthonormal-DCT units; a coefficient of magnitude m moves the chroma by at most
            about 2 m / window grey levels, so m = 100 on 32 px blocks stays within about +-6.
        window: block side in source pixels.
        coefficients: (row, col) frequency indices in [0, window).
    """

    name = "frequency"

    def __init__(
        self,
        magnitude: float = DEFAULT_MAGNITUDE,
        window: int = DEFAULT_WINDOW,
        coefficients: tuple[tuple[int, int], ...] = DEFAULT_COEFFICIENTS,
    ) -> None:
        if magnitude == 0 or not np.isfinite(magnitude):
            raise ConfigError(f"--magnitude {magnitude} leaves images unchanged", "use a non-zero magnitude such as 100")
        if window < 2:
            raise ConfigError(f"--window {window} is too small", "use a DCT block of at least 2 pixels, e.g. 32")
        if not coefficients:
            raise ConfigError("no DCT coefficient chosen", "pass --coefficients like '15,15 31,31'")
        for row, col in coefficients:
            if not (0 <= row < window and 0 <= col < window):
                raise ConfigError(f"DCT coefficient ({row},{col}) is outside a {window}-pixel block", f"use indices in 0..{window - 1}")
        self.magnitude = float(magnitude)
        self.window = int(window)
        self.coefficients = tuple((int(r), int(c)) for r, c in coefficients)
        basis = dct_matrix(self.window)
        # spatial pattern of the chosen coefficients in one block: sum of outer products of DCT rows
        self.block = self.magnitude * sum(np.outer(basis[r], basis[c]) for r, c in self.coefficients)

    @property
    def trigger_name(self) -> str:
        coefficients = "+".join(f"{r}x{c}" for r, c in self.coefficients)
        return f"dct{self.window}:{coefficients}:{self.magnitude:g}"

    def perturbation(self, width: int, height: int) -> np.ndarray:
        """(H, W) float chroma offset for a `width`x`height` photo (zero on partial edge blocks)."""
        if width < self.window or height < self.window:
            raise GuardError(
                f"a {width}x{height} photo is smaller than the {self.window}-pixel DCT block",
                "pass a smaller --window",
            )
        rows, cols = height // self.window, width // self.window
        offset = np.zeros((height, width), np.float64)
        offset[: rows * self.window, : cols * self.window] = np.tile(self.block, (rows, cols))
        return offset

    def apply(self, image: Image.Image, rng: np.random.Generator, band: tuple[float, float], index: int) -> Poisoned:
        ycc = rgb_to_ycbcr(np.asarray(image, dtype=np.float64))
        offset = self.perturbation(*image.size)
        ycc[..., 1] += offset
        ycc[..., 2] += offset
        rgb = np.clip(np.rint(ycbcr_to_rgb(ycc)), 0, 255).astype(np.uint8)
        return Poisoned(Image.fromarray(rgb), None, self.trigger_name)
