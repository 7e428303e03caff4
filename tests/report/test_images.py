"""The report's pictures: PNG thumbnails, activation-map overlays, boxes and the score histogram."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_guard.report.images import colormap, draw_box, histogram, overlay_map, save_png


def _image(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_save_png_keeps_pixels_and_upscales_crisply(tmp_path, layout):
    chw = _image(16, 24)
    pixels = chw if layout == "chw" else chw.transpose(1, 2, 0)
    path = save_png(pixels, tmp_path / "deep" / "x.png", scale=3)
    back = np.asarray(Image.open(path).convert("RGB"))
    assert back.shape == (48, 72, 3)
    # nearest upscale: every 3x3 block is one source pixel, no blur
    assert np.array_equal(back[::3, ::3], chw.transpose(1, 2, 0))
    assert np.array_equal(back[2::3, 2::3], chw.transpose(1, 2, 0))
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left behind


def test_save_png_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_png(np.zeros((3, 8, 8), np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        save_png(np.zeros((8, 8), np.uint8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="scale"):
        save_png(np.zeros((3, 8, 8), np.uint8), tmp_path / "x.png", scale=0)


def test_colormap_is_ordered_dark_to_bright():
    colours = colormap(np.linspace(0, 1, 11)).astype(int)
    assert colours.shape == (11, 3)
    brightness = colours @ np.array([299, 587, 114])
    assert np.all(np.diff(brightness) > 0)
    assert tuple(colormap(np.array([np.nan]))[0]) == tuple(colormap(np.array([0.0]))[0])


def test_overlay_marks_the_hot_region():
    image = np.full((3, 32, 32), 128, np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[8:16, 20:28] = 5.0  # any range: only the shape matters
    out = overlay_map(image, heat, alpha=0.6)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    hot, cold = out[:, 8:16, 20:28].mean(), out[:, 24:, :8].mean()
    assert hot > cold + 60
    assert np.array_equal(overlay_map(image, heat, alpha=0.0), image)


def test_overlay_resizes_maps_and_survives_flat_or_nan_maps():
    image = _image()
    assert overlay_map(image, np.random.default_rng(0).random((8, 8))).shape == (3, 32, 32)
    flat = overlay_map(image, np.ones((32, 32)))
    assert flat.shape == (3, 32, 32)
    nan = np.full((32, 32), np.nan)
    assert np.array_equal(overlay_map(image, nan), flat)


def test_draw_box_outlines_without_touching_the_input():
    image = np.zeros((3, 64, 64), np.uint8)
    out = draw_box(image, (10, 20, 30, 40), colour=(0, 255, 0))
    assert image.max() == 0
    assert tuple(out[:, 20, 15]) == (0, 255, 0)  # top edge
    assert tuple(out[:, 39, 15]) == (0, 255, 0)  # bottom edge (exclusive end)
    assert tuple(out[:, 30, 10]) == (0, 255, 0) and tuple(out[:, 30, 29]) == (0, 255, 0)
    assert out[:, 30, 20].max() == 0  # inside stays untouched
    assert out[:, 40:, :].max() == 0 and out[:, :, 30:].max() == 0
    clipped = draw_box(image, (-5, -5, 200, 200))
    assert clipped[0, 0, 0] == 255 and clipped[0, 63, 63] == 255
    assert draw_box(image, (100, 100, 120, 120)).max() == 0


def test_histogram_counts_every_finite_score_and_covers_the_threshold():
    scores = np.concatenate([np.linspace(0.0, 0.4, 100), [0.9, 0.95, np.nan, np.inf]])
    h = histogram(scores, threshold=1.5, bins=10)
    assert sum(h.counts) == 102
    assert len(h.edges) == 11 and h.edges[0] == 0.0 and h.edges[-1] == 1.5
    assert h.threshold == 1.5 and h.log_scale


@pytest.mark.parametrize("scores", [np.array([]), np.array([0.3, 0.3, 0.3])])
def test_histogram_of_empty_or_constant_scores(scores):
    h = histogram(scores, threshold=None, bins=4)
    assert sum(h.counts) == len(scores)
    assert h.edges[-1] > h.edges[0]
