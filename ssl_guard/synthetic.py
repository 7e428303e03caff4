"""Procedurally generated image datasets: the demo's data and the tests' ground truth.

Each class is a family of scenes (a background style plus shapes of a class colour) drawn with a
seeded random generator, so a dataset of any size is built in seconds without a download. The
images are varied enough that near-duplicates are rare, like real photos.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ("circles", "stripes", "blocks", "rings", "waves", "dots", "grid", "blobs")


def scene(rng: np.random.Generator, class_index: int, size: int = 96) -> Image.Image:
    """One RGB scene of class `class_index` at `size`×`size`."""
    hue = (class_index * 0.13 + rng.uniform(-0.04, 0.04)) % 1.0
    base = np.array(_hsv_to_rgb(hue, rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.9)))
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    pixels = base * (0.6 + 0.4 * gradient) + rng.normal(0, 0.03, (size, size, 3))
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    kind = class_index % len(CLASS_NAMES)
    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 16, size // 4))
        if kind in (0, 3):
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=int(rng.integers(1, 4)), fill=None if kind == 3 else colour)
        elif kind == 1:
            draw.line([0, y, size, (y + r) % size], fill=colour, width=int(rng.integers(2, 6)))
        elif kind == 2:
            draw.rectangle([x, y, x + r, y + r // 2], fill=colour)
        elif kind == 4:
            points = [(i, y + r * np.sin(i / size * 6 + x)) for i in range(0, size, 4)]
            draw.line(points, fill=colour, width=2)
        elif kind == 5:
            draw.ellipse([x, y, x + 3, y + 3], fill=colour)
        elif kind == 6:
            draw.line([x, 0, x, size], fill=colour, width=1)
            draw.line([0, y, size, y], fill=colour, width=1)
        else:
            draw.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def trigger_patch(seed: int = 7, size: int = 24) -> Image.Image:
    """A generated opaque patch trigger: a 4×4 grid of random saturated colours crossed by a
    contrasting diagonal, colourful and busy like the published HTBA triggers."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 4, 3))
    grid[..., int(rng.integers(0, 3))] = rng.choice([0, 255], (4, 4))  # saturate one channel per cell
    image = Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    draw.line([0, 0, size, size], fill=tuple(int(c) for c in 255 - grid[0, 0]), width=max(1, size // 8))
    return image


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


def write_folder(root: Path, per_class: int, classes: int = 4, size: int = 96, seed: int = 0, ext: str = "png") -> list[Path]:
    """Write an image folder `root/<class>/<n>.<ext>`; returns the written paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        folder = Path(root) / CLASS_NAMES[c % len(CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i:05d}.{ext}"
            scene(rng, c, size).save(path)
            paths.append(path)
    return paths


def write_shards(root: Path, per_class: int, classes: int = 4, size: int = 96, seed: int = 0, per_shard: int = 100) -> list[Path]:
    """Write WebDataset shards `root/shard-NNNNNN.tar` holding `<key>.png` and `<key>.cls`."""
    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    samples = [(c, i) for c in range(classes) for i in range(per_class)]
    order = rng.permutation(len(samples))
    paths = []
    for shard_index, start in enumerate(range(0, len(samples), per_shard)):
        path = Path(root) / f"shard-{shard_index:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for j in order[start : start + per_shard]:
                c, i = samples[j]
                buffer = io.BytesIO()
                scene(rng, c, size).save(buffer, format="PNG")
                key = f"{CLASS_NAMES[c % len(CLASS_NAMES)]}_{i:05d}"
                add_tar_member(tar, f"{key}.png", buffer.getvalue())
                add_tar_member(tar, f"{key}.cls", str(c).encode())
        paths.append(path)
    return paths


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a regular file `name` holding `data` to an open tar archive (mtime 0: reproducible)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
