"""Write a poisoned copy of a dataset as WebDataset shards, with its ground truth kept outside.

`poison_dataset` reads an image folder or shards (never modifying them), draws the poisons, applies
an attack at the source resolution, and writes `DST/poisoned-NNNNNN.tar` (each sample
`<key>.jpg|png` + `<key>.cls`) plus a truth CSV that must not lie inside DST. Every sample, clean
or poisoned, is decoded and re-encoded the same way, so the file format carries no trace of which
ones were attacked. Runs with the same seed write the same samples, keys, order and pixels.

The protocol is SSL-Backdoor's targeted attack (Saha et al., CVPR 2022): the poisons are a random
subset of the target class whose size is `rate * len(dataset)`. With `split="val"` every image is
triggered (corner band 0.10-0.90), to measure the backdoor's effect downstream.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ssl_guard.attacks.base import TRAIN_BAND, VAL_BAND, Attack, psnr
from ssl_guard.attacks.truth import TruthRow, write_truth
from ssl_guard.data import DecodeError, SampleId, Skipped, Sources, decode_rgb, iter_raw_samples, resolve_sources
from ssl_guard.errors import ConfigError, EmptyDatasetError, RunDirError

SHARD_PATTERN = "poisoned-{:06d}.tar"
DEFAULT_SAMPLES_PER_SHARD = 1000
JPEG_QUALITY = 95
FORMATS = ("jpg", "png")


@dataclass(frozen=True)
class SourceSample:
    """A readable sample of the source: where it is, its class and its key in the output."""

    unit: int
    id: SampleId
    label: str | None


@dataclass
class PoisonSummary:
    """What `poison_dataset` wrote."""

    out: Path
    truth: Path
    shards: list[str]
    samples: int
    poisoned: int
    attack: str
    target: str
    split: str
    skipped: list[Skipped] = field(default_factory=list)
    mean_psnr: float | None = None  # dB, poisoned vs clean pixels at source resolution
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Pure planning steps


def poison_count(rate: float, total: int) -> int:
    """`rate * total` rounded half up: the number of poisons of the protocol."""
    if not (0.0 < rate <= 1.0) or not math.isfinite(rate):
        raise ConfigError(f"--rate {rate} is outside (0, 1]", "give the poison share of the dataset, e.g. 0.01 for 1%")
    count = int(math.floor(rate * total + 0.5))
    if count < 1:
        raise ConfigError(f"--rate {rate} of {total} samples is less than one poison", f"use a rate of at least {1.0 / total:.2g}")
    return count


def choose_poisons(labels: Sequence[str | None], target: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `count` samples drawn without replacement from class `target`, sorted.

    Raises:
        ConfigError: the class does not exist, or holds fewer than `count` samples.
    """
    members = np.flatnonzero(np.array([label == target for label in labels], dtype=bool))
    if members.size == 0:
        raise ConfigError(f"class {target!r} does not exist in the source", f"classes found: {describe_classes(labels)}")
    if members.size < count:
        raise ConfigError(
            f"class {target!r} has {members.size} images but the rate asks for {count} poisons",
            "lower --rate or pick a larger --target-class",
        )
    return np.sort(rng.choice(members, size=count, replace=False))


def describe_classes(labels: Sequence[str | None], limit: int = 12) -> str:
    names = sorted({label for label in labels if label is not None})
    if not names:
        return "none (the source has no class labels: a folder per class or a .cls field)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-]")


def output_keys(samples: Sequence[SourceSample], sources: Sources) -> list[str]:
    """Unique WebDataset keys for `samples`, stable across runs.

    Folder images keep their path without extension, shard samples their key; '/', '.' and any
    other character outside [A-Za-z0-9_-] become '_' (webdataset splits a key at its first dot).
    Shard samples get their shard's name as a prefix only when keys repeat across shards.

    Raises:
        ConfigError: two samples would still share a key.
    """

    def clean(text: str) -> str:
        return _UNSAFE_KEY.sub("_", text)

    keys = [clean(s.id.key) for s in samples]
    if len(set(keys)) != len(keys):
        keys = [
            clean(s.id.key) if sources.units[s.unit].kind == "files" else clean(_stem(sources.units[s.unit].name) + "_" + s.id.key)
            for s in samples
        ]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicate = next(k for k in keys if k in seen or seen.add(k))
        raise ConfigError(f"two source samples map to the same key {duplicate!r}", "rename one of them")
    return keys


def _stem(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------
# Reading the source


def list_samples(sources: Sources) -> tuple[list[SourceSample], list[Skipped]]:
    """Every readable sample of `sources` with its class, in source order; unreadable ones apart.

    Folder images are listed from their names alone; shards are read once.
    """
    samples: list[SourceSample] = []
    skipped: list[Skipped] = []
    for index, unit in enumerate(sources.units):
        if unit.kind == "files":
            for rel in unit.files:
                parent = os.path.basename(os.path.dirname(rel)) or None
                samples.append(SourceSample(index, SampleId(rel, os.path.splitext(rel)[0]), parent))
            continue
        for raw in iter_raw_samples(unit):
            if raw.data is None:
                skipped.append(Skipped(raw.id, raw.error or "unreadable"))
            else:
                samples.append(SourceSample(index, raw.id, raw.label))
    return samples, skipped


def _read_in_order(sources: Sources, samples: list[SourceSample], order: np.ndarray) -> Iterator[tuple[int, bytes | None, str]]:
    """Yield `(sample index, bytes or None, error)` for `samples[order[i]]`, in that order.

    Folders are read by random access; shards, which cannot be, only in source order (`order`
    must then be the identity).
    """
    if all(unit.kind == "files" for unit in sources.units):
        for index in order:
            sample = samples[index]
            try:
                with open(os.path.join(sources.units[sample.unit].root, sample.id.source), "rb") as handle:
                    yield int(index), handle.read(), ""
            except OSError as error:
                yield int(index), None, f"unreadable file: {error.strerror or error}"
        return
    if not np.array_equal(order, np.arange(len(samples))):
        raise ValueError("shard sources can only be read in source order")
    position = {(s.unit, s.id): i for i, s in enumerate(samples)}
    for unit_index, unit in enumerate(sources.units):
        for raw in iter_raw_samples(unit):
            index = position.get((unit_index, raw.id))
            if index is not None:
                yield index, raw.data, raw.error or ""


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """Encode an RGB image: JPEG quality 95 without chroma subsampling (which would blur chroma
    triggers away before any scan could see them), or lossless PNG."""
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Output paths


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_paths(src_specs: Sequence[str], out: Path, truth: Path) -> None:
    """Refuse outputs that would modify the source, reveal the truth to a scan, or overwrite files.

    Raises:
        ConfigError: DST or the truth inside a source folder (or a source inside DST), the truth
            inside DST.
        RunDirError: DST exists and is not an empty folder, or the truth file already exists.
    """
    out, truth = out.resolve(), truth.resolve()
    if _inside(truth, out):
        raise ConfigError(f"the truth {truth} is inside the output {out}", "write --truth outside --out, so that a scan of the output cannot read it")
    for spec in src_specs:
        if "://" in str(spec) or str(spec).startswith("pipe:"):
            continue
        src = Path(spec).resolve()
        if src.is_dir() and (_inside(out, src) or _inside(src, out)):
            raise ConfigError(f"the output {out} overlaps the source {src}", "write the poisoned copy to a folder outside the source")
        if src.is_dir() and _inside(truth, src):
            raise ConfigError(f"the truth {truth} is inside the source {src}", "write --truth outside the source, which is never modified")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out} exists and is not an empty folder", "choose a new --out folder or remove the old one")
    if truth.exists():
        raise RunDirError(f"the truth file {truth} already exists", "choose a new --truth path or remove the old file")


# ---------------------------------------------------------------------------------------------
# The whole job


def poison_dataset(
    src_specs: Sequence[str],
    out: str | Path,
    truth: str | Path,
    attack: Attack,
    target_class: str,
    rate: float | None = None,
    split: str = "train",
    seed: int = 0,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    image_format: str = "jpg",
    shuffle: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> PoisonSummary:
    """Write a poisoned copy of `src_specs` to `out` and its ground truth to `truth`.

    `split="train"` poisons `round(rate * N)` images of `target_class` (corner band 0.25-0.75);
    `split="val"` triggers every image (band 0.10-0.90) and takes no rate. Folder sources are
    shuffled into the shards (seeded) unless `shuffle=False`; shard sources keep their order.
    The shards are built in a hidden sibling folder (removed on any error) and moved into place
    only when complete; the truth is then written atomically, so neither is ever half-written.

    Raises:
        ConfigError, RunDirError, DataNotFoundError, EmptyDatasetError: bad arguments or paths.
    """
    started = time.perf_counter()
    out, truth = Path(out), Path(truth)
    if split not in ("train", "val"):
        raise ConfigError(f"--split {split!r} is unknown", "use train or val")
    if image_format not in FORMATS:
        raise ConfigError(f"--format {image_format!r} is unknown", "use jpg or png")
    if samples_per_shard < 1:
        raise ConfigError(f"--samples-per-shard {samples_per_shard} is not positive", "use e.g. 1000")
    if split == "val" and rate is not None:
        raise ConfigError("--rate does not apply to --split val", "a triggered validation split triggers every image; drop --rate")
    if split == "train" and rate is None:
        raise ConfigError("--rate is required for a training split", "e.g. --rate 0.01 for 1% of the dataset")
    band = VAL_BAND if split == "val" else TRAIN_BAND
    if hasattr(attack, "check_fits"):
        attack.check_fits(band)
    check_paths(src_specs, out, truth)

    sources = resolve_sources(list(src_specs))
    samples, skipped = list_samples(sources)
    if not samples:
        raise EmptyDatasetError(f"no readable image in {', '.join(map(str, src_specs))}")
    labels = [s.label for s in samples]
    rng = np.random.default_rng(seed)
    if split == "val":
        if target_class not in set(labels):
            raise ConfigError(f"class {target_class!r} does not exist in the source", f"classes found: {describe_classes(labels)}")
        chosen = np.arange(len(samples))
    else:
        chosen = choose_poisons(labels, target_class, poison_count(rate, len(samples)), rng)
    poison_rank = {int(index): rank for rank, index in enumerate(chosen)}
    keys = output_keys(samples, sources)
    random_access = all(unit.kind == "files" for unit in sources.units)
    order = rng.permutation(len(samples)) if shuffle and random_access else np.arange(len(samples))

    out_abs = out.resolve()
    staging = out_abs.parent / f".{out_abs.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    rows: list[TruthRow] = []
    shards: list[str] = []
    psnrs: list[float] = []
    warnings: list[str] = []
    try:
        from webdataset import TarWriter

        writer = None
        handle = None
        written = 0
        for done, (index, data, error) in enumerate(_read_in_order(sources, samples, order), start=1):
            sample = samples[index]
            image = None
            if data is not None:
                try:
                    image = decode_rgb(data)
                except DecodeError as decode_error:
                    error = str(decode_error)
            if image is None:
                skipped.append(Skipped(sample.id, error or "unreadable"))
                if index in poison_rank:
                    warnings.append(f"chosen poison {sample.id.source} could not be decoded and was left out")
                continue
            row = TruthRow("", keys[index], False, label=sample.label or "")
            if index in poison_rank:
                # one generator per sample, so a poison's pixels do not depend on the writing order
                attacked = attack.apply(image, np.random.default_rng([seed, 1, index]), band, poison_rank[index])
                psnrs.append(psnr(image, attacked.image))
                image = attacked.image
                row = TruthRow("", keys[index], True, attack.name, target_class, attacked.box, sample.label or "", attacked.trigger)
            if written % samples_per_shard == 0:
                if writer is not None:
                    writer.close()
                    handle.close()
                shards.append(SHARD_PATTERN.format(len(shards)))
                handle = open(staging / shards[-1], "wb")
                writer = TarWriter(handle, encoder=False, mtime=0)
            sample_record = {"__key__": keys[index], image_format: encode_image(image, image_format)}
            if sample.label is not None:
                sample_record["cls"] = sample.label.encode("utf-8")
            writer.write(sample_record)
            rows.append(dataclasses.replace(row, source=shards[-1]))
            written += 1
            if progress is not None:
                progress(done, len(samples))
        if writer is not None:
            writer.close()
            handle.close()
        if not rows:
            raise EmptyDatasetError(f"no image of {', '.join(map(str, src_specs))} could be decoded")
        if out_abs.exists():
            out_abs.rmdir()  # checked empty above; rename needs it gone
        os.rename(staging, out_abs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_truth(truth, rows)
    finite = [p for p in psnrs if math.isfinite(p)]
    return PoisonSummary(
        out=out_abs,
        truth=truth.resolve(),
        shards=shards,
        samples=len(rows),
        poisoned=sum(r.poisoned for r in rows),
        attack=attack.name,
        target=target_class,
        split=split,
        skipped=skipped,
        mean_psnr=float(np.mean(finite)) if finite else None,
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )
