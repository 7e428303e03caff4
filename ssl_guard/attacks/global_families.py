"""Seeded families of *global* triggers: signals spread over the whole image, for the global zoo
(`bench/zoo_global.py`) and the `additive` detector's tests.

Two kinds, both deterministic given `(family, seed)`:

- blends, x' = (1 - alpha) x + alpha p, with p one of: `noise` (uniform colour noise on a coarse
  grid of 4-32 cells, resized bilinearly), `stripes` (two-colour stripes at a random angle and
  period), `sig` (a horizontal sinusoid in the style of SIG, Barni et al. 2019, here blended rather
  than added) and `photo` (a natural photo from another dataset: nothing about it is unnatural);
- `ctrl`: the CTRL frequency trigger (Li et al., ICCV 2023) as `ssl_guard.attacks.frequency`
  builds it, with a drawn magnitude (30-100), window (8, 16 or 32) and coefficients either at the
  published spots (window/2 - 1 and window - 1 on the diagonal) or at two random high-frequency
  spots.

`GlobalTrigger.apply(rgb)` takes and returns (H, W, 3) uint8 arrays; the pattern is resized to each
photo, so one trigger serves photos of any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from ssl_guard.attacks.frequency import FrequencyAttack, rgb_to_ycbcr, ycbcr_to_rgb

BLEND_FAMILIES = ("noise", "stripes", "sig", "photo")
GLOBAL_FAMILIES = BLEND_FAMILIES + ("ctrl",)


@dataclass
class GlobalTrigger:
    """One drawn global trigger. `pattern` is the blend pattern (H0, W0, 3) uint8 for blends;
    `ctrl` the frequency attack for `ctrl`."""

    family: str
    seed: int
    alpha: float = 0.0
    pattern: np.ndarray | None = None
    ctrl: FrequencyAttack | None = None
    params: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.family}-{self.seed}"

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if self.ctrl is not None:
            ycc = rgb_to_ycbcr(rgb.astype(np.float64))
            offset = self.ctrl.perturbation(w, h)
            ycc[..., 1] += offset
            ycc[..., 2] += offset
            return np.clip(np.rint(ycbcr_to_rgb(ycc)), 0, 255).astype(np.uint8)
        p = self.pattern
        if p.shape[:2] != (h, w):
            p = np.asarray(Image.fromarray(p).resize((w, h), Image.BILINEAR))
        out = (1.0 - self.alpha) * rgb.astype(np.float64) + self.alpha * p.astype(np.float64)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def _pattern(family: str, rng: np.random.Generator, size: int, pool: Sequence[np.ndarray]) -> tuple[np.ndarray, dict]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if family == "noise":
        cells = int(rng.choice([4, 8, 16, 32]))
        grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR)), {"cells": cells}
    if family == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.06, 0.25) * size
        phase = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period + phase
        sharp = rng.uniform() < 0.5
        wave = (np.sign(np.sin(t)) if sharp else np.sin(t)) * 0.5 + 0.5
        a, b = _colour(rng), _colour(rng)
        out = a[None, None] * wave[..., None] + b[None, None] * (1 - wave[..., None])
        return np.clip(out, 0, 255).astype(np.uint8), {"angle": float(angle), "period_share": float(period / size), "square": bool(sharp)}
    if family == "sig":
        cycles = rng.uniform(3, 12)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * xx / size + rng.uniform(0, 2 * np.pi))
        grey = rng.uniform() < 0.5
        colour = np.full(3, 255.0) if grey else _colour(rng)
        return np.clip(colour[None, None] * wave[..., None], 0, 255).astype(np.uint8), {"cycles": float(cycles)}
    if family == "photo":
        if not len(pool):
            raise ValueError("the photo family needs a pool of photos from another dataset")
        photo = pool[int(rng.integers(len(pool)))]
        return np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC)), {}
    raise ValueError(f"unknown blend family {family!r}")


def make_global_trigger(family: str, seed: int, alpha: float | None = None, pool: Sequence[np.ndarray] = (), size: int = 256) -> GlobalTrigger:
    """Draw trigger `seed` of `family`; `alpha` (blends) defaults to a draw in 0.05-0.2."""
    rng = np.random.default_rng([seed, 0x6C0B])
    if family == "ctrl":
        window = int(rng.choice([8, 16, 32]))
        magnitude = float(rng.uniform(30, 100))
        if rng.uniform() < 0.5:
            coefficients = ((window // 2 - 1, window // 2 - 1), (window - 1, window - 1))
            where = "published"
        else:
            lo = window // 2
            coefficients = tuple((int(rng.integers(lo, window)), int(rng.integers(lo, window))) for _ in range(2))
            where = "random"
        attack = FrequencyAttack(magnitude, window, coefficients)
        return GlobalTrigger(family, seed, ctrl=attack, params={"window": window, "magnitude": magnitude, "coefficients": [list(c) for c in coefficients], "where": where})
    if family not in BLEND_FAMILIES:
        raise ValueError(f"unknown global family {family!r}; choose from {', '.join(GLOBAL_FAMILIES)}")
    pattern, params = _pattern(family, rng, size, pool)
    a = float(rng.uniform(0.05, 0.2)) if alpha is None else float(alpha)
    return GlobalTrigger(family, seed, alpha=a, pattern=pattern, params=params)
