"""Seeded families of patch-trigger designs, for red-teaming a detector on a distribution of triggers.

An attacker picks the trigger, so a detector tuned on one design says little about the next. Each
family below draws a different kind of pattern from a seed; `make_trigger(family, seed)` returns
an RGB `PIL.Image` (square, `size` px), and `copy_trigger` renders one pasted copy of it with the
per-copy jitter a careful attacker may add (scale, rotation, brightness, contrast, saturation).

Families:
    grid      random-colour grids and checkerboards (2-6 cells a side)
    blobs     smooth Gaussian blobs, from saturated colours to nearly grey
    glyph     a drawn letter or digit string on a flat plate
    logo      a few filled geometric shapes on a plate (circle, triangle, bars)
    qr        a binary code: a random bit matrix with finder squares, black on white
    noise     a patch of random noise, coloured or grey, at one of three grain sizes
    gradient  a linear or radial colour gradient, with or without bands
    stripes   parallel stripes at a random angle and period
    photo     a crop of a natural photo (from a pool the caller supplies: use another dataset)

The published HTBA triggers are not generated; `bench/zoo.py` reads them from disk as a tenth family.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

FAMILIES = ("grid", "blobs", "glyph", "logo", "qr", "noise", "gradient", "stripes", "photo")


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.5, 1.0)) -> tuple[int, int, int]:
    return _hsv(float(rng.uniform()), float(rng.uniform(*saturation)), float(rng.uniform(0.3, 1.0)))


def _grid(rng: np.random.Generator, size: int) -> Image.Image:
    cells = int(rng.integers(2, 7))
    if rng.uniform() < 0.4:  # a two-colour checkerboard
        a, b = _colour(rng), _colour(rng)
        board = (np.add.outer(np.arange(cells), np.arange(cells)) % 2)[..., None]
        small = np.where(board == 0, np.array(a), np.array(b)).astype(np.uint8)
    else:
        small = np.array([[_colour(rng, (0.0, 1.0)) for _ in range(cells)] for _ in range(cells)], np.uint8)
    return Image.fromarray(small).resize((size, size), Image.NEAREST)


def _blobs(rng: np.random.Generator, size: int) -> Image.Image:
    # saturation from vivid to nearly grey; blob contrast shrinks with it
    saturation = float(rng.uniform(0.05, 1.0))
    base = np.array(_hsv(float(rng.uniform()), saturation * 0.5, float(rng.uniform(0.3, 0.8))), np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / size
    pixels = np.broadcast_to(base, (size, size, 3)).copy()
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0.1, 0.9, 2)
        sigma = rng.uniform(0.08, 0.3)
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))[..., None]
        colour = np.array(_hsv(float(rng.uniform()), saturation, float(rng.uniform(0.2, 1.0))), np.float64)
        pixels = pixels * (1 - weight) + colour * weight
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _glyph(rng: np.random.Generator, size: int) -> Image.Image:
    plate, ink = _colour(rng, (0.0, 0.6)), _colour(rng, (0.0, 1.0))
    image = Image.new("RGB", (size, size), plate)
    draw = ImageDraw.Draw(image)
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789#@&%"
    text = "".join(rng.choice(list(alphabet), int(rng.integers(1, 4))))
    font = _font(int(size * rng.uniform(0.4, 0.7)))
    box = draw.textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    draw.text(((size - w) / 2 - box[0], (size - h) / 2 - box[1]), text, fill=ink, font=font)
    if rng.uniform() < 0.5:
        draw.rectangle([1, 1, size - 2, size - 2], outline=ink, width=max(1, size // 24))
    return image


def _logo(rng: np.random.Generator, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), _colour(rng, (0.0, 0.5)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        kind = int(rng.integers(0, 3))
        x0, y0 = rng.uniform(0, 0.6, 2) * size
        w, h = rng.uniform(0.2, 0.5, 2) * size
        fill = _colour(rng)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        elif kind == 1:
            draw.polygon([(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)], fill=fill)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h / 3], fill=fill)
    return image


def _qr(rng: np.random.Generator, size: int) -> Image.Image:
    n = int(rng.integers(7, 13))
    bits = rng.uniform(size=(n, n)) < 0.5
    for cy, cx in ((0, 0), (0, n - 3), (n - 3, 0)):  # finder squares in three corners
        bits[cy : cy + 3, cx : cx + 3] = True
        bits[cy + 1, cx + 1] = True
    small = np.where(bits[..., None], 0, 255).astype(np.uint8).repeat(3, axis=2)
    small = np.pad(small, ((1, 1), (1, 1), (0, 0)), constant_values=255)
    return Image.fromarray(small).resize((size, size), Image.NEAREST)


def _noise(rng: np.random.Generator, size: int) -> Image.Image:
    grain = int(rng.choice([2, 4, 8]))
    cells = max(2, size // grain)
    if rng.uniform() < 0.5:
        small = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    else:
        small = rng.integers(0, 256, (cells, cells, 1), dtype=np.uint8).repeat(3, axis=2)
    return Image.fromarray(small).resize((size, size), Image.NEAREST)


def _gradient(rng: np.random.Generator, size: int) -> Image.Image:
    a, b = np.array(_colour(rng), np.float64), np.array(_colour(rng), np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if rng.uniform() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5) + 0.5
    else:
        cy, cx = rng.uniform(0.2, 0.8, 2)
        t = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) * 1.4
    t = np.clip(t, 0, 1)
    if rng.uniform() < 0.5:  # banded
        t = np.floor(t * int(rng.integers(3, 7))) / 6
    pixels = a * (1 - t[..., None]) + b * t[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _stripes(rng: np.random.Generator, size: int) -> Image.Image:
    a, b = np.array(_colour(rng, (0.0, 1.0)), np.float64), np.array(_colour(rng, (0.0, 1.0)), np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.15, 0.4)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    t = (np.sin(2 * np.pi * phase) > 0).astype(np.float64) if rng.uniform() < 0.6 else 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    pixels = a * (1 - t[..., None]) + b * t[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _photo(rng: np.random.Generator, size: int, pool: Sequence[Image.Image]) -> Image.Image:
    if not pool:
        raise ValueError("the photo family needs a pool of natural photos (from another dataset)")
    photo = pool[int(rng.integers(0, len(pool)))].convert("RGB")
    w, h = photo.size
    side = int(min(w, h) * rng.uniform(0.3, 0.7))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)


_MAKERS = {"grid": _grid, "blobs": _blobs, "glyph": _glyph, "logo": _logo, "qr": _qr, "noise": _noise, "gradient": _gradient, "stripes": _stripes}


def make_trigger(family: str, seed: int, size: int = 64, pool: Sequence[Image.Image] = ()) -> Image.Image:
    """One trigger of `family` drawn from `seed`: an RGB `size`×`size` image.

    Raises:
        ValueError: unknown family, or `photo` without a pool.
    """
    rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
    if family == "photo":
        return _photo(rng, size, pool)
    if family not in _MAKERS:
        raise ValueError(f"unknown trigger family {family!r}; known: {', '.join(FAMILIES)}")
    return _MAKERS[family](rng, size)


def copy_trigger(trigger: Image.Image, width: int, rng: np.random.Generator | None, jitter: bool) -> tuple[Image.Image, Image.Image]:
    """One pasted copy of `trigger` at `width` px: (RGB copy, L mask of where it covers).

    With `jitter`, each copy is scaled by ±15%, rotated by ±15° and has its brightness, contrast
    and saturation changed by ±20%, so no two copies are pixel-identical.
    """
    side = max(2, int(width))
    if not jitter or rng is None:
        return trigger.resize((side, side), Image.BICUBIC), Image.new("L", (side, side), 255)
    side = max(2, int(round(side * rng.uniform(0.85, 1.15))))
    copy = trigger.resize((side, side), Image.BICUBIC)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        copy = enhancer(copy).enhance(float(rng.uniform(0.8, 1.2)))
    angle = float(rng.uniform(-15, 15))
    mask = Image.new("L", (side, side), 255).rotate(angle, resample=Image.BILINEAR, expand=True)
    copy = copy.rotate(angle, resample=Image.BICUBIC, expand=True)
    return copy, mask


def paste_trigger(photo: Image.Image, copy: Image.Image, mask: Image.Image, corner: tuple[int, int], alpha: float = 1.0) -> Image.Image:
    """`photo` with `copy` pasted at `corner` (top-left) through `mask`, blended at `alpha` (1 = opaque)."""
    out = photo.copy()
    if alpha < 1.0:
        mask = mask.point(lambda v: int(round(v * alpha)))
    out.paste(copy, corner, mask)
    return out
