"""The blended-injection attack (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems
Using Data Poisoning", 2017): a full-image pattern alpha-blended into the photo,
x' = (1 - alpha) x + alpha p. At a small alpha it is hard to see and has no location to mask,
which is what patch-based defences miss.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ssl_guard.attacks.base import Poisoned
from ssl_guard.errors import ConfigError

DEFAULT_ALPHA = 0.1
# The generated pattern is noise on a coarse grid: per-pixel noise on a 224 px photo would be
# averaged away by the scan's resize to 64 px, which no real attacker targeting a pipeline would do.
PATTERN_GRID = 32


def generated_pattern(seed: int, grid: int = PATTERN_GRID) -> Image.Image:
    """A fixed uniform-noise RGB pattern of `grid`x`grid` cells (resized to each photo when used)."""
    rng = np.random.default_rng([seed, 0xB1E4D])
    return Image.fromarray(rng.integers(0, 256, (grid, grid, 3), dtype=np.uint8))


class BlendAttack:
    """Blend `pattern` into the whole photo at `alpha` in (0, 1]."""

    name = "blend"

    def __init__(self, pattern: Image.Image, alpha: float = DEFAULT_ALPHA, pattern_name: str = "pattern") -> None:
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"--alpha {alpha} is outside (0, 1]", "blend attacks use a small alpha such as 0.1")
        self.pattern = pattern.convert("RGB")
        self.alpha = alpha
        self.pattern_name = pattern_name
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def _pattern(self, size: tuple[int, int]) -> np.ndarray:
        if size not in self._cache:
            self._cache[size] = np.asarray(self.pattern.resize(size, Image.BILINEAR), dtype=np.float32)
        return self._cache[size]

    def apply(self, image: Image.Image, rng: np.random.Generator, band: tuple[float, float], index: int) -> Poisoned:
        pixels = np.asarray(image, dtype=np.float32)
        mixed = (1.0 - self.alpha) * pixels + self.alpha * self._pattern(image.size)
        out = Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
        return Poisoned(out, None, self.pattern_name)
