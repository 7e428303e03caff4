"""The bootstrap's decoded-image cache: decode the data once, train every later epoch from disk.

Decoding a 224-px JPEG and resizing it costs 1.2-1.9 CPU ms per image on the development machine
(bench/RESULTS.md, "Decoding floor"), which is as much as a narrow network's whole training step at
64 px; and the decoding workers take cores that training threads could use. So the first epoch,
which has to decode anyway, also writes every decoded image into one uint8 memmap; later epochs
draw shuffled batches from it with no decoding workers at all. The file lives in the run folder
(`cache/`), is committed by a small JSON record written last (an interrupted first epoch leaves no
usable cache, and the next epoch decodes again), and is deleted when the run finishes.

Memory stays flat: the memmap is read a batch at a time, so the page cache, not the process,
holds it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from ssl_guard.atomic import write_bytes_atomic

IMAGES_NAME = "images.u8.npy"
RECORD_NAME = "cache.json"


class DecodedCache:
    """`(N, 3, S, S)` uint8 decoded training images in `folder`, for one data fingerprint and side."""

    def __init__(self, folder: Path, images: np.ndarray, count: int, side: int, fingerprint: str, skipped: int = 0) -> None:
        self.folder = Path(folder)
        self.skipped = skipped  # samples of the data that could not be decoded
        self.images = images
        self.count = count
        self.side = side
        self.fingerprint = fingerprint

    # -- building (first epoch) ---------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, capacity: int, side: int, fingerprint: str) -> "DecodedCache":
        """An empty cache with room for `capacity` images (the survey's count, an upper bound on
        what decodes); an older, uncommitted or stale cache in `folder` is replaced."""
        folder = Path(folder)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        images = np.lib.format.open_memmap(folder / IMAGES_NAME, mode="w+", dtype=np.uint8, shape=(max(1, capacity), 3, side, side))
        return cls(folder, images, 0, side, fingerprint)

    def append(self, batch: np.ndarray) -> None:
        """Store decoded images `(B, 3, S, S)` uint8; more than the capacity is an error."""
        if batch.shape[1:] != (3, self.side, self.side):
            raise ValueError(f"cache holds (3, {self.side}, {self.side}) images, got {batch.shape[1:]}")
        end = self.count + len(batch)
        if end > len(self.images):
            raise ValueError(f"decoded {end} images, more than the {len(self.images)} the data was surveyed to hold")
        self.images[self.count : end] = batch
        self.count = end

    def commit(self, skipped: int = 0) -> None:
        """Flush the images, then write the record that makes the cache usable; `skipped` counts
        the samples that could not be decoded."""
        self.images.flush()
        self.skipped = skipped
        record = {"count": self.count, "side": self.side, "fingerprint": self.fingerprint, "skipped": skipped}
        write_bytes_atomic(self.folder / RECORD_NAME, (json.dumps(record) + "\n").encode())

    # -- reading (later epochs) ---------------------------------------------------------------

    @classmethod
    def open_committed(cls, folder: Path, side: int, fingerprint: str) -> "DecodedCache | None":
        """The committed cache in `folder` for this side and data, or None (absent, uncommitted or stale)."""
        folder = Path(folder)
        try:
            record = json.loads((folder / RECORD_NAME).read_text())
            images = np.load(folder / IMAGES_NAME, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if record.get("side") != side or record.get("fingerprint") != fingerprint or record.get("count", 0) > len(images):
            return None
        return cls(folder, images, int(record["count"]), side, fingerprint, int(record.get("skipped", 0)))

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """One epoch of `(batch_size, 3, S, S)` uint8 batches in a fresh random order.

        Each batch is a random subset read in ascending row order (sequential reads of the
        memmap); the order inside a batch does not matter to a contrastive loss. As in
        `epoch_batches`, the remainder smaller than a batch is dropped unless the whole cache is
        smaller than one batch (then it is the only batch, if it holds at least 2 images).
        """
        order = rng.permutation(self.count)
        if self.count < batch_size:
            if self.count >= 2:
                yield np.ascontiguousarray(self.images[np.sort(order)])
            return
        for start in range(0, self.count - batch_size + 1, batch_size):
            yield np.ascontiguousarray(self.images[np.sort(order[start : start + batch_size])])


__all__ = ["DecodedCache"]
