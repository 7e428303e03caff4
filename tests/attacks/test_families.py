"""Seeded trigger families: each draws a real pattern, deterministically, and differs by seed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_guard.attacks.families import FAMILIES, copy_trigger, make_trigger, paste_trigger

POOL = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)) for i in range(3)]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_seeded_and_varied(family):
    a = np.asarray(make_trigger(family, 1, 64, POOL))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, np.asarray(make_trigger(family, 1, 64, POOL)))  # same seed, same trigger
    others = [np.asarray(make_trigger(family, s, 64, POOL)) for s in range(2, 6)]
    assert all(not np.array_equal(a, o) for o in others)  # another seed, another trigger
    assert a.astype(float).std() > 0  # a pattern, not a flat square


def test_unknown_family_and_photo_without_pool_are_refused():
    with pytest.raises(ValueError, match="unknown trigger family"):
        make_trigger("sparkles", 0)
    with pytest.raises(ValueError, match="pool"):
        make_trigger("photo", 0)


def test_jittered_copies_differ_and_identical_copies_do_not():
    trigger = make_trigger("qr", 3)
    rng = np.random.default_rng(0)
    a, mask_a = copy_trigger(trigger, 30, rng, jitter=True)
    b, _ = copy_trigger(trigger, 30, rng, jitter=True)
    assert a.size != b.size or not np.array_equal(np.asarray(a), np.asarray(b))
    assert 0.85 * 30 - 1 <= min(a.size) and mask_a.size == a.size
    same1, m1 = copy_trigger(trigger, 30, rng, jitter=False)
    same2, _ = copy_trigger(trigger, 30, rng, jitter=False)
    assert same1.size == (30, 30) and np.array_equal(np.asarray(same1), np.asarray(same2))
    assert np.asarray(m1).min() == 255


def test_paste_blends_only_inside_the_mask():
    photo = Image.new("RGB", (40, 40), (0, 0, 0))
    copy = Image.new("RGB", (10, 10), (200, 100, 50))
    mask = Image.new("L", (10, 10), 255)
    opaque = np.asarray(paste_trigger(photo, copy, mask, (5, 5)))
    half = np.asarray(paste_trigger(photo, copy, mask, (5, 5), alpha=0.5))
    assert tuple(opaque[7, 7]) == (200, 100, 50) and tuple(opaque[0, 0]) == (0, 0, 0)
    assert abs(int(half[7, 7, 0]) - 100) <= 1 and tuple(half[20, 20]) == (0, 0, 0)
    assert np.asarray(photo).max() == 0  # the input photo is not modified
