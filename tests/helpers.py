"""Small helpers shared by several test modules."""

from __future__ import annotations

import tarfile
from pathlib import Path


def shard_ids(folder: Path) -> list[tuple[str, str]]:
    """(shard name, key) of every sample of the .tar shards in `folder`, read straight from the tars."""
    ids = []
    for path in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(path) as tar:
            ids += sorted({(path.name, m.name.split(".")[0]) for m in tar.getmembers()})
    return ids
