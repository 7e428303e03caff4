"""What every attack is: a seeded function from one clean RGB photo to its poisoned copy.

An attack works at the photo's own (source) resolution, before any pipeline resizes it, as a real
attacker's poisons would: a scan that later resizes to 64 px sees copies that are not pixel-exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

# Top-left corner bands (fractions of each side) of the SSL-Backdoor protocol (Saha et al., CVPR 2022):
# training poisons in the central band, triggered validation images almost anywhere.
TRAIN_BAND = (0.25, 0.75)
VAL_BAND = (0.10, 0.90)


@dataclass(frozen=True)
class Poisoned:
    """One attacked photo: the new pixels, the trigger box if it is local, and the trigger's name.

    `box` is `(x0, y0, x1, y1)` in source pixels, exclusive end; None for full-image attacks.
    """

    image: Image.Image
    box: tuple[int, int, int, int] | None
    trigger: str


class Attack(Protocol):
    """A poison generator. `name` goes to the truth's `attack` column."""

    name: str

    def apply(self, image: Image.Image, rng: np.random.Generator, band: tuple[float, float], index: int) -> Poisoned:
        """Poison one RGB photo. `index` is the photo's rank among the poisons (for trigger rotation)."""
        ...


def psnr(clean: Image.Image, poisoned: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two RGB images of one size (inf when identical)."""
    a = np.asarray(clean, dtype=np.float64)
    b = np.asarray(poisoned, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
