"""Generated images with a planted patch trigger, as arrays or as WebDataset shards."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_guard import synthetic

R = 64


def planted_patch_images(n: int, poisons: int, seed: int = 0, spread: bool = False, trigger_seed: int = 3):
    """n scenes at 64 px; `poisons` of them (from class 0 unless `spread`) carry one 12-px trigger.

    The trigger is pasted at the scan resolution here, so its copies are pixel-exact; the
    benchmark (bench/RESULTS.md) covers triggers pasted before a resize on real photos.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, R, R), np.uint8)
    truth = np.zeros(n, bool)
    boxes = np.full((n, 4), -1.0)
    pool = np.arange(n) if spread else np.arange(n // 4)
    chosen = set(rng.choice(pool, poisons, replace=False).tolist())
    trigger = synthetic.trigger_patch(seed=trigger_seed, size=12)
    for i in range(n):
        scene = synthetic.scene(rng, 0 if i < n // 4 else 1 + i % 3, 96).resize((R, R), Image.BILINEAR)
        if i in chosen:
            x, y = (int(v) for v in rng.integers(16, 48 - 12, 2))
            scene.paste(trigger, (x, y))
            truth[i] = True
            boxes[i] = [x, y, x + 12, y + 12]
        images[i] = np.asarray(scene).transpose(2, 0, 1)
    return images, truth, boxes


def write_planted_shards(root: Path, n: int, poisons: int, seed: int = 0, per_shard: int = 60) -> tuple[Path, dict[tuple[str, str], bool]]:
    """Shards `root/shards/part-NNN.tar` of `planted_patch_images` as PNG + .cls; returns the shard
    folder and the truth {(shard name, key): poisoned}."""
    images, truth, _ = planted_patch_images(n, poisons, seed)
    folder = Path(root) / "shards"
    folder.mkdir(parents=True)
    answer = {}
    for shard, start in enumerate(range(0, n, per_shard)):
        name = f"part-{shard:03d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                key = f"img{i:05d}"
                _add_image(tar, key, images[i].transpose(1, 2, 0), 0 if i < n // 4 else 1 + i % 3)
                answer[(name, key)] = bool(truth[i])
    return folder, answer


def write_poisoned_scene_shards(root: Path, seed: int, per_shard: int) -> list[str]:
    """4 classes x 30 generated 96 px scenes in shards of `per_shard`, shuffled; the first 12 of
    class 0 carry the same 24 px patch trigger (16 px at a 64 px scan) at a random spot. Returns
    the poisoned keys."""
    rng = np.random.default_rng(seed)
    trigger = synthetic.trigger_patch(seed=7, size=24)
    samples, poisoned = [], []
    for c in range(4):
        for i in range(30):
            image = synthetic.scene(rng, c, 96)
            key = f"{synthetic.CLASS_NAMES[c]}_{i:04d}"
            if c == 0 and i < 12:
                x, y = (int(v) for v in rng.integers(10, 96 - 24 - 10, 2))
                image.paste(trigger, (x, y))
                poisoned.append(key)
            samples.append((key, c, image))
    order = rng.permutation(len(samples))
    root.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(samples), per_shard)):
        with tarfile.open(root / f"shard-{shard:06d}.tar", "w") as tar:
            for j in order[start : start + per_shard]:
                key, c, image = samples[j]
                _add_image(tar, key, np.asarray(image), c)
    return poisoned


def _add_image(tar: tarfile.TarFile, key: str, pixels: np.ndarray, label: int) -> None:
    """`<key>.png` from (H, W, 3) uint8 pixels and `<key>.cls`."""
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    synthetic.add_tar_member(tar, f"{key}.png", png.getvalue())
    synthetic.add_tar_member(tar, f"{key}.cls", str(label).encode())


def write_mixed_size_shards(root: Path, n: int, poisons: int, trigger_px: int = 20, seed: int = 0, per_shard: int = 60) -> tuple[Path, dict[tuple[str, str], tuple[int, int, int, int] | None]]:
    """Shards of `n` generated scenes of mixed sizes (short side 96-192 px, aspect 3:4 to 4:3), as
    photos of real sizes are; `poisons` of them (class 0) carry one `trigger_px`-px trigger pasted
    at that fixed pixel size, as on ImageNet. At a 64 px square scan the copies then range from
    about 13 to 6 px. Returns the shard folder and {(shard, key): the trigger's box in the photo's
    own pixels, or None}."""
    rng = np.random.default_rng(seed)
    trigger = synthetic.trigger_patch(seed=5, size=trigger_px)
    chosen = set(rng.choice(n // 4, poisons, replace=False).tolist())
    folder = Path(root) / "shards"
    folder.mkdir(parents=True)
    answer: dict[tuple[str, str], tuple[int, int, int, int] | None] = {}
    for shard, start in enumerate(range(0, n, per_shard)):
        name = f"part-{shard:03d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                label = 0 if i < n // 4 else 1 + i % 3
                short, aspect = int(rng.integers(96, 193)), float(rng.uniform(0.75, 4 / 3))
                w, h = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
                scene = np.asarray(synthetic.scene(rng, label, 192).resize((w, h), Image.BILINEAR), dtype=np.float64)
                # sensor-like grain at the photo's own size: a smooth render alone would make the
                # scan's measured resampling tolerance far tighter than any photo's
                grain = np.asarray(Image.fromarray(rng.normal(0, 1, (h // 3, w // 3)).astype(np.float32)).resize((w, h), Image.BICUBIC))
                image = Image.fromarray(np.clip(scene + 24 * grain[..., None], 0, 255).astype(np.uint8))
                box = None
                if i in chosen:
                    x = int(rng.integers(w // 4, w - trigger_px - w // 8))
                    y = int(rng.integers(h // 4, h - trigger_px - h // 8))
                    image.paste(trigger, (x, y))
                    box = (x, y, x + trigger_px, y + trigger_px)
                key = f"img{i:05d}"
                _add_image(tar, key, np.asarray(image), label)
                answer[(name, key)] = box
    return folder, answer
