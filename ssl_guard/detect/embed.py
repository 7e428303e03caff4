"""Embed stage: decode every sample once, keep its scan-resolution pixels and its embedding.

Each data unit (shard or folder group) is written to `units/NNNNNN.npz` as soon as it is done, so
an interrupted scan (even `kill -9`) redoes only the units it had not finished. The units are then
concatenated, in unit order, into two memmaps: the image cache `images.u8` (N, 3, R, R) uint8 that
every later stage reads instead of decoding again, and `embeddings.f16` (N, D) float16. Memory stays
flat: one batch in flight per DataLoader worker, one unit at a time while assembling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from typing import Callable

import numpy as np
import torch

from ssl_guard.data import NativeScale, SampleId, Skipped, Sources, stream_batches
from ssl_guard.run import RunFolder, write_csv

UNITS_DIR = "units"


def unit_file(index: int) -> str:
    return f"{UNITS_DIR}/{index:06d}.npz"


@dataclass
class ScanArrays:
    """The assembled per-sample arrays of a run, row-aligned.

    images: (N, 3, R, R) uint8 read-only memmap; embeddings: (N, D) float16 read-only memmap,
    L2-normalised rows; ids and labels: per row; skipped: samples that could not be read.
    """

    ids: list[SampleId]
    labels: list[str]
    units: np.ndarray
    images: np.ndarray
    embeddings: np.ndarray
    skipped: list[Skipped]
    digests: list[str] = field(default_factory=list)  # sha256 of each sample's bytes ("" if unknown)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # each photo's own (width, height); (0, 0) if unknown

    def __len__(self) -> int:
        return len(self.ids)


def _embed_batch(encoder: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    pixels = torch.from_numpy(images).to(device, non_blocking=True)
    pixels = pixels.float().div_(255.0).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return encoder(pixels).float().cpu().numpy().astype(np.float16)


def embed_units(
    run: RunFolder,
    sources: Sources,
    unit_indices: list[int],
    encoder: torch.nn.Module,
    resolution: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    max_pixels: int,
    advance: Callable[[int], None] = lambda k: None,
) -> int:
    """Embed the given units that have no finished unit file yet; returns how many samples it read.

    A unit file is written atomically when its last batch arrives, so a unit file on disk is always
    complete.
    """
    todo = [i for i in unit_indices if not (run / unit_file(i)).is_file()]
    pending: dict[int, dict[str, list]] = {}
    read = 0
    for batch in stream_batches(sources, resolution, batch_size, workers, todo, max_pixels):
        part = pending.setdefault(batch.unit, {"ids": [], "labels": [], "digests": [], "sizes": [], "images": [], "embeddings": [], "skipped": []})
        if len(batch.ids):
            part["ids"].extend(batch.ids)
            part["labels"].extend(label or "" for label in batch.labels)
            part["digests"].extend(batch.digests)
            part["sizes"].extend(batch.sizes)
            part["images"].append(batch.images)
            part["embeddings"].append(_embed_batch(encoder, batch.images, device))
            read += len(batch.ids)
        advance(len(batch.ids) + len(batch.skipped))
        if batch.last:
            part["skipped"].extend(batch.skipped)
            _write_unit(run, batch.unit, pending.pop(batch.unit), resolution, _embed_dim(encoder))
    return read


def _embed_dim(encoder: torch.nn.Module) -> int:
    return int(encoder.config.embed_dim)


def _write_unit(run: RunFolder, index: int, part: dict[str, list], resolution: int, dim: int) -> None:
    images = np.concatenate(part["images"]) if part["images"] else np.zeros((0, 3, resolution, resolution), np.uint8)
    embeddings = np.concatenate(part["embeddings"]) if part["embeddings"] else np.zeros((0, dim), np.float16)
    run.save_npz(
        unit_file(index),
        sources=np.array([i.source for i in part["ids"]], dtype=str),
        keys=np.array([i.key for i in part["ids"]], dtype=str),
        labels=np.array(part["labels"], dtype=str),
        digests=np.array(part["digests"], dtype=str),
        sizes=np.array(part["sizes"], dtype=np.int64).reshape(-1, 2),
        images=images,
        embeddings=embeddings,
        skipped_sources=np.array([s.id.source for s in part["skipped"]], dtype=str),
        skipped_keys=np.array([s.id.key for s in part["skipped"]], dtype=str),
        skipped_reasons=np.array([s.reason for s in part["skipped"]], dtype=str),
    )


def assemble(run: RunFolder, unit_count: int, resolution: int, dim: int) -> ScanArrays:
    """Concatenate the unit files, in unit order, into the run's memmaps and tables."""
    counts = []
    for index in range(unit_count):
        with np.load(run / unit_file(index), allow_pickle=False) as data:
            counts.append(len(data["keys"]))
    n = int(sum(counts))
    images = np.lib.format.open_memmap(run / "images.u8.npy", mode="w+", dtype=np.uint8, shape=(n, 3, resolution, resolution))
    embeddings = np.lib.format.open_memmap(run / "embeddings.f16.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    rows, skipped, unit_of_row = [], [], np.zeros(n, np.int32)
    at = 0
    for index in range(unit_count):
        data = run.load_npz(unit_file(index))
        k = len(data["keys"])
        images[at : at + k] = data["images"]
        embeddings[at : at + k] = data["embeddings"]
        unit_of_row[at : at + k] = index
        digests = data["digests"].tolist() if "digests" in data else [""] * k
        sizes = data["sizes"].tolist() if "sizes" in data else [[0, 0]] * k
        rows.extend(zip(data["sources"].tolist(), data["keys"].tolist(), data["labels"].tolist(), digests, sizes))
        skipped.extend(Skipped(SampleId(s, k_), r) for s, k_, r in zip(data["skipped_sources"].tolist(), data["skipped_keys"].tolist(), data["skipped_reasons"].tolist()))
        at += k
    images.flush()
    embeddings.flush()
    del images, embeddings
    write_csv(
        run / "samples.csv",
        ["row", "source", "key", "label", "unit", "sha256", "width", "height"],
        ((i, s, k, lab, int(unit_of_row[i]), h, int(wh[0]), int(wh[1])) for i, (s, k, lab, h, wh) in enumerate(rows)),
    )
    write_csv(run / "skipped.csv", ["source", "key", "reason"], ((s.id.source, s.id.key, s.reason) for s in skipped))
    np.save(run / "units.npy", unit_of_row)
    return open_arrays(run)


def open_arrays(run: RunFolder) -> ScanArrays:
    """Open an assembled run's arrays read-only."""
    import csv

    with open(run / "samples.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    with open(run / "skipped.csv", newline="") as handle:
        skipped = [Skipped(SampleId(r["source"], r["key"]), r["reason"]) for r in csv.DictReader(handle)]
    images = np.load(run / "images.u8.npy", mmap_mode="r")
    embeddings = np.load(run / "embeddings.f16.npy", mmap_mode="r")
    return ScanArrays(
        ids=[SampleId(r["source"], r["key"]) for r in table],
        labels=[r["label"] for r in table],
        units=np.load(run / "units.npy"),
        images=images,
        embeddings=embeddings,
        skipped=skipped,
        digests=[r.get("sha256") or "" for r in table],
        sizes=[(int(r.get("width") or 0), int(r.get("height") or 0)) for r in table],
    )


NATIVE_NAME = "native.u8.npy"


def build_native_view(run: RunFolder, sources: Sources, arrays: ScanArrays, layout: NativeScale, batch_size: int, workers: int, max_pixels: int, advance: Callable[[int], None] = lambda k: None) -> np.ndarray:
    """Decode the scan once more into its native view (`ssl_guard.data.NativeScale`), row-aligned
    with `arrays`: `native.u8.npy`, (N, 3, C, C) uint8. Only photos of mixed sizes need it; the
    patch detector reads it so that a trigger pasted at a fixed pixel size keeps one size."""
    row_of = {sample: row for row, sample in enumerate(arrays.ids)}
    path = run / NATIVE_NAME
    partial = path.with_name(path.name + ".partial")
    view = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(arrays), 3, layout.canvas, layout.canvas))
    filled = np.zeros(len(arrays), bool)
    for batch in stream_batches(sources, layout, batch_size, workers, None, max_pixels):
        for sample, pixels in zip(batch.ids, batch.images):
            row = row_of.get(sample)
            if row is not None:  # a sample unreadable at embed time stays out of both
                view[row] = pixels
                filled[row] = True
        advance(len(batch.ids) + len(batch.skipped))
    if not filled.all():
        missing = arrays.ids[int(np.argmin(filled))]
        raise RuntimeError(f"{missing.source}:{missing.key} was read at embed time but not when decoding the native view: did the data change during the scan?")
    view.flush()
    del view
    os.replace(partial, path)
    return open_native_view(run)


def open_native_view(run: RunFolder) -> np.ndarray:
    return np.load(run / NATIVE_NAME, mmap_mode="r")
