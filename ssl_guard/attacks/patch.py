"""The targeted patch attack of SSL-Backdoor (Saha et al., "Backdoor Attacks on Self-Supervised
Learning", CVPR 2022), as PatchSearch and PoisonCAM evaluate it.

An opaque trigger image is resized to a fixed fraction of the photo and pasted with its top-left
corner drawn uniformly in a band of each side: 0.25-0.75 for training poisons, 0.10-0.90 for the
triggered validation set. The upper end is clipped so that the trigger always lies wholly inside the
photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ssl_guard.attacks.base import Poisoned
from ssl_guard.errors import ConfigError, DataNotFoundError

# trigger_10 (80x80) at 0.19 of a 224 px photo is 43 px, which a 64 px scan sees as about 12 px.
DEFAULT_TRIGGER_WIDTH = 0.19


def load_trigger(path: str | Path) -> Image.Image:
    """An opaque RGB trigger image from a file (transparency is flattened onto black)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"trigger {path} does not exist", "pass an image file to --trigger")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except OSError as error:
        raise DataNotFoundError(f"trigger {path} is not a readable image: {error}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    return image.convert("RGB")


class PatchAttack:
    """Paste one of `triggers` (rotating through them in equal shares) opaquely into a photo.

    Args:
        triggers: (name, RGB image) pairs; several triggers give several backdoors at once.
        width: trigger width as a fraction of the photo's width, in (0, 1]. Its height is scaled by
            the same fraction of the photo's height (times the trigger's aspect ratio), so that the
            whole-image resize of a scan turns it into the same square share of every photo.
    """

    name = "patch"

    def __init__(self, triggers: list[tuple[str, Image.Image]], width: float = DEFAULT_TRIGGER_WIDTH) -> None:
        if not triggers:
            raise ConfigError("the patch attack needs at least one trigger", "pass --trigger PNG or omit it for a generated one")
        if not 0.0 < width <= 1.0:
            raise ConfigError(
                f"--trigger-width {width} makes a trigger larger than the image",
                "give the trigger width as a fraction of the image side in (0, 1], e.g. 0.19",
            )
        self.triggers = [(name, image.convert("RGB")) for name, image in triggers]
        self.width = width
        self._cache: dict[tuple[int, int, int], Image.Image] = {}

    def check_fits(self, band: tuple[float, float]) -> None:
        """Refuse a trigger that cannot be placed with its corner in the band and inside the image."""
        if band[0] + self.width > 1.0 + 1e-9:
            raise ConfigError(
                f"a trigger of {self.width:g} of the side does not fit with its corner at {band[0]:g} of the side",
                f"use --trigger-width of at most {1.0 - band[0]:g}",
            )

    def trigger_size(self, width: int, height: int, which: int) -> tuple[int, int]:
        """(w, h) in pixels of trigger `which` on a `width`x`height` photo."""
        tw, th = self.triggers[which][1].size
        w = max(1, round(self.width * width))
        h = max(1, round(self.width * height * th / tw))
        return min(w, width), min(h, height)

    def _resized(self, which: int, size: tuple[int, int]) -> Image.Image:
        key = (which, *size)
        if key not in self._cache:
            self._cache[key] = self.triggers[which][1].resize(size, Image.BICUBIC)
        return self._cache[key]

    def apply(self, image: Image.Image, rng: np.random.Generator, band: tuple[float, float], index: int) -> Poisoned:
        which = index % len(self.triggers)
        width, height = image.size
        w, h = self.trigger_size(width, height, which)
        x0 = _corner(rng, width, w, band)
        y0 = _corner(rng, height, h, band)
        out = image.copy()
        out.paste(self._resized(which, (w, h)), (x0, y0))
        return Poisoned(out, (x0, y0, x0 + w, y0 + h), self.triggers[which][0])


def _corner(rng: np.random.Generator, side: int, size: int, band: tuple[float, float]) -> int:
    """A top-left coordinate uniform in the band, clipped so that `size` pixels fit in `side`."""
    high = min(int(band[1] * side), side - size)
    low = min(int(np.ceil(band[0] * side)), high)
    return int(rng.integers(low, high + 1))
