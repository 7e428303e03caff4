"""The bootstrap's decoded-image cache: what goes in comes out, once per epoch, and only when committed."""

from __future__ import annotations

import numpy as np
import pytest

import ssl_guard.encoders.bootstrap as bootstrap_module
from ssl_guard.data import resolve_sources
from ssl_guard.encoders.bootstrap import BootstrapConfig, bootstrap, epoch_batches
from ssl_guard.encoders.decoded_cache import DecodedCache

TINY = dict(batch_size=16, resolution=32, width=8, workers=0, shuffle_buffer=0)


def filled(folder, count: int, side: int = 4, capacity: int | None = None) -> DecodedCache:
    cache = DecodedCache.create(folder, capacity or count, side, "data-1")
    rows = np.arange(count, dtype=np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 3, side, side), dtype=np.uint8)
    for start in range(0, count, 7):  # blocks of uneven size, as decoding delivers them
        cache.append(rows[start : start + 7])
    return cache


def row_ids(batch: np.ndarray) -> list[int]:
    return batch[:, 0, 0, 0].tolist()


def test_an_epoch_reads_every_cached_image_at_most_once_in_full_batches(tmp_path):
    filled(tmp_path / "c", 50).commit(skipped=2)
    cache = DecodedCache.open_committed(tmp_path / "c", 4, "data-1")
    assert (cache.count, cache.skipped) == (50, 2)
    batches = list(cache.batches(16, np.random.default_rng(0)))
    assert [b.shape for b in batches] == [(16, 3, 4, 4)] * 3  # 50 = 3 x 16 + 2 dropped
    seen = [i for b in batches for i in row_ids(b)]
    assert len(set(seen)) == 48 and set(seen) <= set(range(50))
    other = [i for b in cache.batches(16, np.random.default_rng(1)) for i in row_ids(b)]
    assert other != seen  # each epoch draws a new order
    small = list(DecodedCache.open_committed(tmp_path / "c", 4, "data-1").batches(64, np.random.default_rng(0)))
    assert [sorted(row_ids(b)) for b in small] == [list(range(50))]  # less than a batch: all of it, once


def test_only_a_committed_cache_of_the_same_data_and_side_is_used(tmp_path):
    cache = filled(tmp_path / "c", 10, capacity=12)
    assert DecodedCache.open_committed(tmp_path / "c", 4, "data-1") is None  # interrupted first epoch
    cache.commit()
    assert DecodedCache.open_committed(tmp_path / "c", 4, "data-1").count == 10
    assert DecodedCache.open_committed(tmp_path / "c", 8, "data-1") is None
    assert DecodedCache.open_committed(tmp_path / "c", 4, "data-2") is None
    assert DecodedCache.open_committed(tmp_path / "missing", 4, "data-1") is None
    with pytest.raises(ValueError, match="more than"):
        cache.append(np.zeros((3, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="holds"):
        cache.append(np.zeros((1, 3, 5, 5), dtype=np.uint8))


def test_the_cache_holds_exactly_the_decoded_images(image_folder, tmp_path):
    sources = resolve_sources([str(image_folder)])
    cache = DecodedCache.create(tmp_path / "c", 48, 24, "x")
    decoded = list(epoch_batches(sources, 24, 48, np.random.default_rng(0), workers=0, decoded=cache.append))
    cache.commit()
    assert cache.count == 48
    as_rows = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))  # noqa: E731
    assert as_rows(np.asarray(cache.images[:48])) == as_rows(np.concatenate(decoded))


def test_bootstrap_decodes_once_then_trains_from_the_cache_and_removes_it(image_folder, tmp_path, monkeypatch):
    decodes = []
    real = bootstrap_module.epoch_batches

    def counted(*args, **kwargs):
        decodes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bootstrap_module, "epoch_batches", counted)
    cached = bootstrap([str(image_folder)], tmp_path / "cached", BootstrapConfig(**TINY, epochs=3), progress=False)
    assert len(decodes) == 1
    assert not (tmp_path / "cached" / "cache").exists()
    assert cached.config.training["steps"] == 9  # 48 images, 3 full batches per epoch, as when decoding

    decodes.clear()
    bootstrap([str(image_folder)], tmp_path / "plain", BootstrapConfig(**TINY, epochs=3, cache=False), progress=False)
    assert len(decodes) == 3

