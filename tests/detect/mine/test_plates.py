"""Step 5b (`plates`): smooth regions that repeat exactly become candidate groups; and step 7's
rule for smooth templates (a host must be closer to the template than to its flat mean colour)."""

from __future__ import annotations

import numpy as np
import torch

from ssl_guard.detect.mine.plates import flat_step, neighbour_difference, plate_groups, smooth_regions
from ssl_guard.detect.mine.scoring import agreeing_share, has_structure, keep_agreeing


def _gradient(size: int = 10) -> np.ndarray:
    """(3, size, size) uint8: a gentle purple-to-red ramp (3 levels a pixel), no corner inside."""
    t = np.linspace(0, 1, size)[None, :] * np.ones((size, 1))
    return np.stack([90 + 27 * t, 20 + 9 * t, 120 - 27 * t]).round().astype(np.uint8)


def _scenes(n: int, seed: int) -> np.ndarray:
    """Photo-like scenes: a smooth random field (a few levels from pixel to pixel), a busy strip
    of texture, and smooth rectangles of every colour and size (natural smooth regions)."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(rng.random((n, 3, 6, 6)))
    images = (torch.nn.functional.interpolate(base, size=48, mode="bicubic", align_corners=False).clamp(0, 1) * 255).round().byte().numpy()
    images[:, :, :, :12] = rng.integers(0, 256, (n, 3, 48, 12))
    for i in range(n):
        for _ in range(3):
            h, w = (int(v) for v in rng.integers(5, 12, 2))
            y, x = (int(v) for v in rng.integers(0, 48 - 12, 2))
            # half of them of one continuum of shades (skies, walls): alike, but not one colour
            colour = rng.integers(20, 235, (3, 1, 1)) if rng.uniform() < 0.5 else np.full((3, 1, 1), rng.uniform(100, 160)).round()
            images[i, :, y : y + h, x + 12 : x + 12 + w] = colour
    return images


def _with_gradient(n: int = 120, carriers: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    images = _scenes(n, seed)
    truth = np.zeros(n, bool)
    for i in range(carriers):
        y, x = int(rng.integers(2, 36)), int(rng.integers(14, 36))
        images[i, :, y : y + 10, x : x + 10] = _gradient()
        truth[i] = True
    return images, truth


def test_neighbour_difference_is_zero_inside_a_flat_area_and_large_at_its_edge():
    image = np.zeros((3, 8, 8), np.uint8)
    image[:, :, 4:] = 200
    d = neighbour_difference(image)
    assert d[:, :3].max() == 0 and d[:, 5:].max() == 0 and d[:, 3:5].min() == 200


def test_a_repeated_smooth_square_is_one_region_per_copy_and_the_burstiest_group():
    images, truth = _with_gradient()
    rows = np.arange(len(images))
    step = flat_step(images, rows)
    regions = smooth_regions(images, rows, step, 4, 16)
    # each copy's ramp is one smooth region of about its size
    on = [j for j in range(len(regions)) if truth[regions.image[j]] and abs(regions.box[j, 2] - 10) <= 2 and abs(regions.box[j, 3] - 10) <= 2]
    assert len({int(regions.image[j]) for j in on}) == truth.sum()
    groups = plate_groups(regions, 6.0, 3)
    assert groups, "the copies form a group"
    first_rows, members = groups[0]
    assert set(first_rows.tolist()) <= set(np.nonzero(truth)[0].tolist()) and len(first_rows) >= 0.8 * truth.sum()
    assert len(members) == len(first_rows) and all(truth[regions.image[m]] for m in members)


def test_natural_smooth_regions_of_every_colour_form_no_large_group():
    images = _scenes(120, seed=3)
    rows = np.arange(len(images))
    regions = smooth_regions(images, rows, flat_step(images, rows), 4, 16)
    assert len(regions) > 200
    # ~90 grey rectangles over 60 shades: a few fall within a level of one another by chance (left
    # to verification), never the tens that copies of one pasted region make
    assert all(len(r) < 8 for r, _ in plate_groups(regions, 6.0, 3))


def test_a_smooth_templates_hosts_must_agree_with_it_pixel_for_pixel():
    template = torch.from_numpy(_gradient()).float() / 255
    mean = (template.mean(dim=(1, 2)) * 255).round().byte().numpy()
    images = np.zeros((3, 3, 20, 20), np.uint8)
    images[0, :, 4:14, 4:14] = _gradient()  # a copy
    images[1, :, 4:14, 4:14] = mean[:, None, None]  # a flat patch of the template's mean colour
    images[2, :, 4:14, 4:14] = _gradient()[:, :, ::-1]  # the ramp reversed
    corners = np.array([[4, 4]] * 3)
    rows = np.arange(3)
    tolerance = 2 / 255
    share = agreeing_share(images, rows, corners, template, tolerance)
    assert share[0].min() > 0.9 and share[1, 1] < 0.5 and share[2].max() < 0.5
    residual = np.array([0.0, 1.0, 4.0], np.float32)  # what `residuals` gives these windows
    kept = keep_agreeing(images, rows, residual, corners, template, tolerance, threshold=5.0)
    assert kept[0] == 0.0 and np.isinf(kept[1]) and np.isinf(kept[2])
    # windows above the threshold are left as they are
    assert keep_agreeing(images, rows, residual, corners, template, tolerance, threshold=0.5)[1] == 1.0
    # a plate of one colour with a pale mark: a flat patch agrees with most of its pixels, not
    # with the mark, so it is not a host; a copy is
    plate = np.full((3, 10, 10), 150, np.uint8)
    plate[:, 3:7, 4:6] = 120
    images[0, :, 4:14, 4:14] = plate
    images[1, :, 4:14, 4:14] = 150
    plate_template = torch.from_numpy(plate).float() / 255
    kept = keep_agreeing(images, rows, residual, corners, plate_template, 6 / 255, threshold=5.0)
    assert kept[0] == 0.0 and np.isinf(kept[1])
    # the ramp has structure above a 2-level tolerance; a flat plate, or the ramp at a tolerance
    # wider than its own spread, does not
    assert has_structure(template, tolerance) and has_structure(plate_template, 6 / 255)
    assert not has_structure(torch.full((3, 10, 10), 0.5), tolerance)
    assert not has_structure(template, 40 / 255)
