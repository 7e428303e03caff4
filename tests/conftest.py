"""Shared fixtures: small generated datasets, built per session, never read from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_guard import synthetic


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """An image folder of 4 classes × 12 PNGs at 96 px."""
    root = tmp_path_factory.mktemp("folder")
    synthetic.write_folder(root, per_class=12, classes=4)
    return root


@pytest.fixture(scope="session")
def shard_folder(tmp_path_factory) -> Path:
    """WebDataset shards of 4 classes × 12 PNGs at 96 px, 20 samples per shard."""
    root = tmp_path_factory.mktemp("shards")
    synthetic.write_shards(root, per_class=12, classes=4, per_shard=20)
    return root
