"""The scan's decoding dataset, at module level so that DataLoader workers can be started by
`spawn` and `forkserver` (the defaults on macOS, on Windows and from Python 3.14), which pickle
the dataset and its collate function by reference. Imports torch: `ssl_guard.data` loads it lazily.
"""

from __future__ import annotations

from typing import Iterator

import torch.utils.data

from ssl_guard.data import Sources, UnitBatch, decode_unit


def keep_batch(batch: UnitBatch) -> UnitBatch:
    """The DataLoader's collate function: batches are made by `decode_unit`, so pass them through."""
    return batch


class UnitStream(torch.utils.data.IterableDataset):
    """Decodes the given units, split across DataLoader workers by unit."""

    def __init__(self, sources: Sources, unit_indices: list[int], resolution: "int | NativeScale", batch_size: int, max_pixels: int):
        self.sources, self.unit_indices = sources, unit_indices
        self.resolution, self.batch_size, self.max_pixels = resolution, batch_size, max_pixels

    def __iter__(self) -> Iterator[UnitBatch]:
        info = torch.utils.data.get_worker_info()
        mine = self.unit_indices if info is None else self.unit_indices[info.id :: info.num_workers]
        for index in mine:
            yield from decode_unit(self.sources.units[index], index, self.resolution, self.batch_size, self.max_pixels)
