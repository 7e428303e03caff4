"""The native view of photos of mixed sizes: one scale factor for every photo, and the way back
to the square cache's coordinates; end to end, a fixed-pixel trigger on photos of mixed sizes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from ssl_guard.data import NativeScale, native_scale
from ssl_guard.detect.native import NativeView
from ssl_guard.detect.pipeline import scan
from tests.detect.planted import write_mixed_size_shards


def test_photos_of_one_size_keep_the_square_cache():
    assert native_scale([(224, 224)] * 10, 64) is None
    assert native_scale([(500, 375)] * 5 + [(505, 378)] * 5, 64) is None  # within 2^(1/8)
    assert native_scale([(0, 0)] * 3, 64) is None  # sizes unknown
    assert native_scale([(256, 256), (512, 400), (0, 0)], 64) is None  # one photo could not be placed


def test_mixed_sizes_map_the_median_short_side_to_the_resolution():
    sizes = [(256, 256), (384, 300), (512, 400), (400, 512)]
    layout = native_scale(sizes, 64)
    median_short = np.median([min(s) for s in sizes])
    assert layout.factor == pytest.approx(64 / median_short)
    assert layout.canvas >= round(512 * layout.factor) - 1 and layout.canvas <= 128


def test_the_canvas_is_capped_and_a_photo_too_large_is_shrunk_to_fit():
    layout = native_scale([(100, 100)] * 50 + [(2000, 1000)], 64)
    assert layout.canvas <= 128
    x0, y0, w, h = layout.placement(2000, 1000)
    assert w == layout.canvas and abs(h - layout.canvas / 2) <= 1 and x0 == 0 and y0 == (layout.canvas - h) // 2


def test_a_photo_is_centred_at_one_factor_and_padded_with_its_own_reflection():
    layout = NativeScale(factor=0.5, canvas=40)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))  # 60 x 40
    array = layout.array(photo)
    assert array.shape == (3, 40, 40)
    x0, y0, w, h = layout.placement(60, 40)
    assert (w, h) == (30, 20) and (x0, y0) == (5, 10)
    inside = array[:, y0 : y0 + h, x0 : x0 + w]
    assert np.array_equal(inside, np.asarray(photo.resize((30, 20), Image.BILINEAR)).transpose(2, 0, 1))
    # the row above the photo mirrors its first row
    assert np.array_equal(array[:, y0 - 1, x0 : x0 + w], inside[:, 0])


def test_a_fixed_pixel_trigger_has_one_size_in_the_view_and_boxes_map_back_to_the_cache():
    sizes = [(300, 200), (150, 200)]
    layout = NativeScale(factor=0.25, canvas=80)
    view = NativeView(np.zeros((2, 3, 80, 80), np.uint8), layout, sizes)
    # a 40 px trigger at (100, 60) of photo 0 and at (50, 60) of photo 1
    boxes = []
    for (w, h), x in zip(sizes, (100, 50)):
        x0, y0, _, _ = layout.placement(w, h)
        s = layout.scale_of(w, h)
        boxes.append([x0 + x * s, y0 + 60 * s, x0 + (x + 40) * s, y0 + 100 * s])
    boxes = np.array(boxes)
    assert np.allclose(boxes[:, 2] - boxes[:, 0], 10) and np.allclose(boxes[:, 3] - boxes[:, 1], 10)
    cache = view.boxes_to_cache(boxes, np.arange(2), 64)
    # in the square cache the same trigger is 40 * 64 / w wide: 8.5 px in photo 0, 17 px in photo 1
    assert np.allclose(cache[0], [100 * 64 / 300, 60 * 64 / 200, 140 * 64 / 300, 100 * 64 / 200], atol=1)
    assert np.allclose(cache[1], [50 * 64 / 150, 60 * 64 / 200, 90 * 64 / 150, 100 * 64 / 200], atol=1)
    assert (view.boxes_to_cache(np.array([[-1, -1, -1, -1]]), np.array([0]), 64) == -1).all()
    # a box reaching into the padding is cut at the photo's edge
    x0, y0, w, h = layout.placement(300, 200)
    assert view.boxes_to_cache(np.array([[x0 + w - 10, y0 - 5, x0 + w + 3, y0 + 10]]), np.array([0]), 64).tolist() == [[round((w - 10) * 64 / w), 0, 64, round(10 * 64 / h)]]


def test_a_match_map_is_read_over_the_photo_only():
    layout = NativeScale(factor=0.5, canvas=40)
    view = NativeView(np.zeros((1, 3, 40, 40), np.uint8), layout, [(60, 40)])
    heat = np.zeros((40, 40), np.float32)
    x0, y0, w, h = layout.placement(60, 40)
    heat[y0 : y0 + h // 2, x0 : x0 + w // 2] = 1.0  # the photo's top-left quarter
    heat[:y0] = 0.7  # the padding above it
    out = view.map_to_cache(heat, 0, 64).astype(np.float32)
    assert out.shape == (64, 64)
    assert out[:30, :30].min() > 0.9 and out[34:, 34:].max() < 0.1 and (out < 0.6).any()


def test_a_mirrored_twin_in_the_padding_is_not_a_match():
    from ssl_guard.detect.mine.scoring import match_maps, residuals
    import torch

    # a mirror-symmetric checker 2 px from the top-left corner of each photo: the reflected
    # padding holds an exact twin of it up and to the left, which raster order would pick first
    rng = np.random.default_rng(4)
    layout = NativeScale(factor=1.0, canvas=64)
    checker = (np.add.outer(np.arange(9) // 3, np.arange(9) // 3) % 2 * 255).astype(np.uint8)
    sizes, canvases = [], []
    for k in range(6):
        w, h = int(rng.integers(44, 60)), int(rng.integers(30, 38))  # padding of 13-17 px above
        photo = rng.integers(60, 200, (h, w, 3)).astype(np.uint8)
        photo[2:11, 2:11] = checker[..., None]
        sizes.append((w, h))
        canvases.append(layout.array(Image.fromarray(photo)))
    images = np.stack(canvases)
    view = NativeView(images, layout, sizes)
    photos = view.placements()
    template = torch.from_numpy(checker[None].repeat(3, 0).astype(np.float32) / 255)
    _, free = residuals(images, np.arange(6), [template], 6, torch.device("cpu"))
    _, kept = residuals(images, np.arange(6), [template], 6, torch.device("cpu"), photos=photos)
    truth = photos[:, [1, 0]] + 2  # (y, x) of the checker's top-left on each canvas
    assert (np.abs(free[:, 0] - truth).max(axis=1) > 2).sum() >= 3, "without the photos a twin wins"
    assert np.abs(kept[:, 0] - truth).max() <= 1, "on the photo only the copy is found"
    boxes = np.concatenate([kept[:, 0, ::-1], kept[:, 0, ::-1] + 9], axis=1)
    cache = view.boxes_to_cache(boxes, np.arange(6), 64)
    assert ((cache[:, 2] > cache[:, 0]) & (cache[:, 3] > cache[:, 1])).all()
    maps = match_maps(images, np.arange(6), [template], np.zeros(6, np.int64), np.array([0.5]), torch.device("cpu"), photos=photos)
    for row, heat in maps.items():
        x0, y0, w, h = (int(v) for v in photos[row])
        outside = np.ones(heat.shape, bool)
        outside[y0 : y0 + h, x0 : x0 + w] = False
        assert float(heat[outside].max()) < 0.5 < float(heat[~outside].max())


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_a_fixed_pixel_trigger_on_photos_of_mixed_sizes_is_found_through_the_native_view(tmp_path):
    shards, truth = write_mixed_size_shards(tmp_path, n=240, poisons=24)
    scan([str(shards)], tmp_path / "run", method="mine", workers=0, progress=False)
    assert (tmp_path / "run" / "native.u8.npy").is_file()
    entries = json.loads((tmp_path / "run" / "quarantine.json").read_text())["entries"]
    with open(tmp_path / "run" / "samples.csv", newline="") as handle:
        sizes = {(r["source"], r["key"]): (int(r["width"]), int(r["height"])) for r in csv.DictReader(handle)}
    flagged = {(e["source"], e["key"]): e["box"] for e in entries}
    poisons = {k for k, box in truth.items() if box is not None}
    assert len(set(flagged) & poisons) >= 0.9 * len(poisons), "the copies, 6-13 px in the square cache, are found"
    assert not (set(flagged) - poisons), "no clean photo is flagged"
    # the reported boxes are in the square cache's pixels and cover the trigger
    ious = []
    for k in set(flagged) & poisons:
        w, h = sizes[k]
        x0, y0, x1, y1 = truth[k]
        ious.append(_iou(flagged[k], [x0 * 64 / w, y0 * 64 / h, x1 * 64 / w, y1 * 64 / h]))
    assert np.median(ious) > 0.5
    # the control: the same photos in the square cache, where the copies differ in size by 2x
    from ssl_guard.detect.embed import open_arrays
    from ssl_guard.detect.mine import detect_mine

    arrays = open_arrays(tmp_path / "run")
    square = detect_mine(np.ascontiguousarray(arrays.images))
    truth_rows = np.array([truth[(i.source, i.key)] is not None for i in arrays.ids])
    assert square.flagged[truth_rows].sum() < 0.5 * truth_rows.sum()
