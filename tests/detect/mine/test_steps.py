"""The `mine` steps, one by one, on small arrays."""

from __future__ import annotations

import numpy as np
import torch

from ssl_guard.detect.mine.agreement import _dilate, _windows, pad_for_windows, pair_agreement, resampling_tolerance
from ssl_guard.detect.mine.candidates import triangle_groups
from ssl_guard.detect.mine.descriptors import Keypoints, describe
from ssl_guard.detect.mine.edits import smooth
from ssl_guard.detect.mine.extraction import block_around
from ssl_guard.detect.mine.matching import neighbour_pairs
from ssl_guard.detect.mine.scoring import (
    box_sums,
    host_threshold,
    match_residual,
    null_threshold,
    pattern_verdict,
    phase_residual,
    phases,
    prevalence_guard,
    residuals,
    scaled,
    screen_threshold,
    variant_threshold,
)


def _noise_images(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth random fields: natural-looking content with corners, different in every image
    base = rng.random((n, 3, size // 8, size // 8))
    up = torch.nn.functional.interpolate(torch.from_numpy(base), size=size, mode="bicubic", align_corners=False)
    return (up.clamp(0, 1) * 255).round().byte().numpy()


def _pattern(size: int = 10, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, (3, size // 2, size // 2)) * 255).repeat(2, 1).repeat(2, 2).astype(np.uint8)


def _with_pattern(images: np.ndarray, rows, seed: int = 1) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    out, where = images.copy(), {}
    pattern = _pattern()
    for r in rows:
        y, x = (int(v) for v in rng.integers(8, images.shape[-1] - 18, 2))
        out[r, :, y : y + 10, x : x + 10] = pattern
        where[r] = (x, y)
    return out, where


def test_keypoints_land_at_the_same_spot_of_every_copy():
    images, where = _with_pattern(_noise_images(6), range(6))
    points = describe(images, np.arange(6), 64, 7, 32)
    assert points.vectors.shape[1] == 32 and np.allclose(np.linalg.norm(points.vectors, axis=1), 1, atol=1e-4)
    # the pattern's own corners, in its own coordinates, recur in every copy
    local = [set() for _ in range(6)]
    for img, x, y in zip(points.image, points.x, points.y):
        ox, oy = where[int(img)]
        if 0 <= x - ox < 10 and 0 <= y - oy < 10:
            local[int(img)].add((round(float(x - ox)), round(float(y - oy))))
    assert all(len(spots) >= 3 for spots in local), "every copy gets keypoints on the pattern"
    assert set.intersection(*local), "and at least one at the same spot of the pattern in all six"


def test_keypoints_of_a_padded_canvas_are_taken_on_the_photo_only():
    # a faint pattern on the photo (x 16-47, y 12-51), and outside it the strong corners of a
    # padding's folds: the corner detector's quality level, a share of the strongest corner, drops
    # the faint corners unless the padding is left out
    canvas = np.full((1, 3, 64, 64), 128, np.uint8)
    canvas[0, :, :12, :32] = 255
    canvas[0, :, 52:, 32:] = 0
    faint = (_pattern(10, seed=3).astype(np.int16) * 14 // 255 + 121).astype(np.uint8)
    canvas[0, :, 24:34, 26:36] = faint
    region = np.array([[16, 12, 32, 40]])
    on_photo = describe(canvas, np.arange(1), 64, 7, 8, regions=region)
    assert len(on_photo) >= 3, "the faint pattern gets corners"
    assert ((on_photo.x >= 16) & (on_photo.x < 48) & (on_photo.y >= 12) & (on_photo.y < 52)).all()
    everywhere = describe(canvas, np.arange(1), 64, 7, 8)
    near_pattern = (np.abs(everywhere.x - 30.5) < 7) & (np.abs(everywhere.y - 28.5) < 7)
    assert near_pattern.sum() < len(on_photo), "without the region the folds silence the faint corners"


def test_copies_are_each_others_nearest_keypoints_and_agree_pixel_for_pixel():
    images, _ = _with_pattern(_noise_images(40), range(8))
    points = describe(images, np.arange(40), 32, 7, 32)
    a, b, sim = neighbour_pairs(points, 4)
    assert (a < b).all() and (points.image[a] != points.image[b]).all()
    tolerance = resampling_tolerance(images, np.arange(40))
    assert 0 < tolerance < 0.2
    evidence, boxes = pair_agreement(images, points, a, b, tolerance, half=8)
    both = (points.image[a] < 8) & (points.image[b] < 8)
    assert both.any()
    # pairs between copies carry far more evidence than any pair that is not
    assert np.quantile(evidence[both], 0.75) > 3 * max(evidence[~both].max(), 1e-6)


def test_pairs_whose_keypoint_pixels_disagree_are_skipped_with_the_values_the_full_window_gives(monkeypatch):
    import ssl_guard.detect.mine.agreement as agreement

    images, _ = _with_pattern(_noise_images(40, size=48, seed=8), range(0, 40, 3))
    points = describe(images, np.arange(40), 16, 7, 24)
    a, b, _ = neighbour_pairs(points, 4)
    tolerance = resampling_tolerance(images, np.arange(40))
    evidence, boxes = pair_agreement(images, points, a, b, tolerance, 6)
    # every pair windowed (all keypoint pixels read as equal): the same evidence and boxes
    monkeypatch.setattr(agreement, "_centres", lambda padded, rows, x, y, half: torch.zeros((len(rows), 3)))
    full_evidence, full_boxes = pair_agreement(images, points, a, b, tolerance, 6)
    np.testing.assert_array_equal(evidence, full_evidence)
    np.testing.assert_array_equal(boxes, full_boxes)
    assert (evidence > 0).sum() >= 10 and (evidence == 0).mean() > 0.5  # both kinds of pair are there
    monkeypatch.undo()
    # the centre pixel `_centres` reads is the window's own centre
    padded = pad_for_windows(torch.from_numpy(images.astype(np.float32) / 255), 6)
    rows = torch.from_numpy(points.image.astype(np.int64))
    x, y = torch.from_numpy(points.x), torch.from_numpy(points.y)
    windows, _ = _windows(padded, 48, rows, x, y, 6)
    torch.testing.assert_close(agreement._centres(padded, rows, x, y, 6), windows[:, :, 6, 6])


def test_a_flat_or_one_directional_agreement_is_no_evidence():
    flat = np.full((2, 3, 32, 32), 128, np.uint8)
    edge = flat.copy()
    edge[:, :, :, 16:] = 250  # one vertical edge in both images: it agrees along itself only
    for images in (flat, edge):
        points = Keypoints(np.ones((2, 4), np.float32), np.array([0, 1]), np.array([16.0, 16.0], np.float32), np.array([10.0, 20.0], np.float32))
        evidence, _ = pair_agreement(images, points, np.array([0]), np.array([1]), 0.03, half=6)
        assert evidence[0] < 1e-3


def test_triangles_tie_the_copies_and_leave_chance_pairs_out():
    rng = np.random.default_rng(0)
    copies = np.arange(10)
    u, v = np.triu_indices(10, 1)
    keep = rng.random(len(u)) < 0.5
    chance_a, chance_b = rng.integers(10, 1000, 300), rng.integers(10, 1000, 300)  # random pairs, no shared partners
    image_a = np.concatenate([copies[u[keep]], chance_a])
    image_b = np.concatenate([copies[v[keep]], chance_b])
    evidence = np.ones(len(image_a))
    groups = triangle_groups(image_a, image_b, evidence, 1000, budget=len(image_a), min_size=3)
    assert len(groups) >= 1 and set(groups[0].tolist()) <= set(range(10)) and len(groups[0]) >= 7
    assert all(len(g) < 5 for g in groups[1:])


def test_null_threshold_separates_pasted_copies_and_sees_a_continuum():
    rng = np.random.default_rng(0)
    bulk = np.exp(rng.normal(0.0, 0.25, 3000))
    copies = np.concatenate([np.full(30, 0.05), bulk])
    null = null_threshold(copies, 0.01)
    assert null["hosts"] == 30 and null["lookalike_ratio"] < 0.2
    continuum = np.concatenate([np.exp(rng.normal(-1.0, 0.3, 300)), bulk])  # look-alikes all the way down
    assert null_threshold(continuum, 0.01)["lookalike_ratio"] > 0.5
    assert null_threshold(bulk, 0.01)["hosts"] <= 2


def test_the_screen_line_lies_above_the_full_tests_line_drawn_from_the_same_bulk():
    rng = np.random.default_rng(3)
    population = np.exp(rng.normal(-0.5, 0.4, 200_000))
    full = null_threshold(population[:3000], 0.01, 4000)["threshold"]
    # over many full tests of 3,000 images, each screened on 750 of them (nested, as in the
    # detector), the screen's line falls under the full test's only as often as its
    # 3-standard-error margin allows (about 0.1%)
    below = 0
    for draw in range(300):
        rows = rng.choice(len(population), 3000, replace=False)
        screen = screen_threshold(population[rows[::4]], 0.01, 4000, 3000)
        below += screen < null_threshold(population[rows], 0.01, 4000)["threshold"]
    assert below <= 3
    # the same margin on samples drawn apart would be too narrow: it is for nested samples
    assert screen_threshold(population[:750], 0.01, 4000, 3000) < screen_threshold(population[:750], 0.01, 4000, 10**9)
    # screened on the whole sample, the screen's line is the full test's
    assert np.isclose(screen_threshold(population[:3000], 0.01, 4000, 3000), full)


def test_host_threshold_takes_in_copies_just_above_the_line_and_no_clean_image():
    rng = np.random.default_rng(1)
    bulk = np.exp(rng.normal(0.5, 0.3, 4000))  # unrelated images, log-normal around 1.65
    copies = np.exp(rng.normal(-1.5, 0.35, 40))  # one pasted pattern's copies, some coded worse
    residual = np.concatenate([copies, bulk])
    bonferroni = null_threshold(residual, 0.01)["threshold"]
    missed = int((copies >= bonferroni).sum())
    assert missed >= 1  # the strict line leaves some copies out
    widened = host_threshold(residual, bonferroni)
    assert widened["bonferroni_threshold"] == bonferroni and widened["threshold"] > bonferroni
    assert (copies < widened["threshold"]).sum() > 40 - missed
    assert (bulk < widened["threshold"]).sum() <= 1
    # never to a flat patch's residual (1) or beyond, even when the hosts reach it
    near_flat = np.concatenate([np.exp(rng.normal(-1.0, 0.5, 60)), np.exp(rng.normal(1.5, 0.2, 4000))])
    capped = host_threshold(near_flat, 0.5)
    assert 0.5 < capped["threshold"] < 1.0
    # no hosts to fit: the line stays where it was
    assert host_threshold(bulk, 0.2)["threshold"] == 0.2


def test_scaled_templates_keep_their_range_and_at_least_four_pixels():
    template = torch.rand(3, 12, 10)
    assert scaled(template, 0.7).shape == (3, 8, 7) and scaled(template, 1.4).shape == (3, 17, 14)
    assert scaled(torch.rand(3, 5, 5), 0.7).shape == (3, 4, 4)
    big = scaled(template, 1.4)
    assert 0 <= float(big.min()) and float(big.max()) <= 1


def test_a_scaled_variant_is_kept_only_when_it_finds_the_patterns_copies():
    rng = np.random.default_rng(3)
    n = 4000
    own = np.zeros(n, bool)
    own[:40] = True  # the pattern's hosts at its own scale
    bulk = np.exp(rng.normal(0.5, 0.3, n))
    # a variant that matches the same 40 copies and 10 more at its scale: kept, takes all 50
    same = bulk.copy()
    same[:50] = np.exp(rng.normal(-1.5, 0.3, 50))
    kept = variant_threshold(same, own, 0.01 / 4, 0.5)
    assert kept is not None and (same[:50] < kept["threshold"]).sum() >= 45 and (same[50:] < kept["threshold"]).sum() <= 1
    # a variant whose hosts are other images: not the same pattern
    other = bulk.copy()
    other[100:150] = np.exp(rng.normal(-1.5, 0.3, 50))
    assert variant_threshold(other, own, 0.01 / 4, 0.5) is None
    # a variant that matches a natural continuum: refused as a pattern would be
    continuum = bulk.copy()
    continuum[:400] = np.exp(rng.normal(-0.6, 0.4, 400))
    assert variant_threshold(continuum, own, 0.01 / 4, 0.5) is None


def test_residuals_find_a_copy_at_any_sub_pixel_phase():
    images = _noise_images(4, 40)
    pattern = torch.from_numpy(_pattern(12).astype(np.float32) / 255)
    x = torch.from_numpy(images.astype(np.float32) / 255)
    x[1, :, 10:22, 5:17] = pattern
    half = (pattern[:, :, :-1] + pattern[:, :, 1:]) / 2  # the copy resampled half a pixel over
    x[2, :, 20:32, 20:31] = half
    pasted = (x * 255).round().byte().numpy()
    residual, corner = residuals(pasted, np.arange(4), [pattern], 2, torch.device("cpu"))
    assert residual[1, 0] < 0.02 and tuple(corner[1, 0]) == (10, 5)
    assert residual[2, 0] < 0.1
    assert residual[[0, 3], 0].min() > 5 * residual[2, 0]


def test_match_residual_is_zero_for_a_copy_and_large_for_other_content():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 3, 32, 32)).astype(np.float32))
    template = image[0, :, 5:15, 7:17].clone()
    residual = match_residual(image, template)
    assert residual.shape == (1, 23, 23) and residual[0, 5, 7] < 1e-4
    other = torch.from_numpy(rng.random((1, 3, 32, 32)).astype(np.float32))
    assert match_residual(other, template).min() > 0.5


def test_agreement_windows_are_bilinear_samples_with_zeros_outside():
    rng = np.random.default_rng(4)
    images = torch.from_numpy(rng.random((5, 3, 20, 20)).astype(np.float32))
    half, n = 4, 64
    rows = torch.from_numpy(rng.integers(0, 5, n))
    x = torch.from_numpy(rng.uniform(0, 19, n).astype(np.float32))  # keypoints lie in the image
    y = torch.from_numpy(rng.uniform(0, 19, n).astype(np.float32))
    window, inside = _windows(pad_for_windows(images, half), 20, rows, x, y, half)
    # reference: torch's bilinear resampler at the same points (zeros outside the image)
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    gx = ((x[:, None] + offsets) * 2 / 19 - 1)[:, None, :].expand(-1, 2 * half + 1, -1)
    gy = ((y[:, None] + offsets) * 2 / 19 - 1)[:, :, None].expand(-1, -1, 2 * half + 1)
    reference = torch.nn.functional.grid_sample(images[rows], torch.stack([gx, gy], -1), align_corners=True)
    assert window.shape == (n, 3, 9, 9)
    assert torch.allclose(window, reference, atol=1e-5)
    assert torch.equal(inside, (torch.stack([gx, gy], -1).abs() <= 1 + 1e-6).all(-1))


def test_dilation_is_a_three_by_three_max():
    mask = torch.from_numpy(np.random.default_rng(5).random((4, 11, 13)) > 0.85)
    expected = torch.nn.functional.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert torch.equal(_dilate(mask), expected)


def test_box_sums_equal_window_sums():
    values = torch.from_numpy(np.random.default_rng(6).random((2, 1, 17, 23)).astype(np.float32))
    expected = torch.nn.functional.avg_pool2d(values, (5, 7), stride=1) * 35
    assert torch.allclose(box_sums(values, 5, 7), expected, atol=1e-4)


def test_phase_residual_is_the_smallest_residual_over_the_four_phases():
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.random((3, 3, 24, 24)).astype(np.float32))
    template = torch.from_numpy(rng.random((3, 7, 5)).astype(np.float32))
    one_by_one = torch.stack([match_residual(images, shifted) for shifted in phases(template)]).amin(0)
    together = phase_residual(images, template)
    assert together.shape == one_by_one.shape == (3, 19, 21)
    assert torch.allclose(together, one_by_one, atol=1e-4)
    # a copy of a half-pixel-shifted phase is found exactly
    images[1, :, 4:10, 6:10] = phases(template)[3]
    assert float(phase_residual(images[1:2], template)[0, 4, 6]) < 1e-4


def test_a_pattern_in_most_of_the_data_is_reported_not_quarantined():
    flagged = np.array([True] * 6 + [False] * 4 + [True, True])
    which = np.array([0] * 10 + [1, 1])
    kept, shares, warnings = prevalence_guard(flagged, which, patterns=2, limit=0.3)
    assert shares == [0.5, 2 / 12]
    assert kept.tolist() == [False] * 10 + [True, True]
    assert len(warnings) == 1 and "prevalence guard" in warnings[0]


def test_block_around_finds_the_consistent_square():
    consistent = np.zeros((26, 26), bool)
    consistent[7:19, 9:21] = True
    assert block_around(consistent, (10, 10, 16, 16)) == (9, 7, 21, 19)
    assert block_around(np.zeros((26, 26), bool), (10, 10, 16, 16)) is None


def test_refine_refuses_a_shared_block_wider_than_half_the_image():
    from ssl_guard.detect.mine.extraction import refine

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 3, 64, 64)).astype(np.uint8)
    big = rng.integers(0, 256, (3, 40, 40)).astype(np.uint8)
    images[:, :, 10:50, 12:52] = big  # a 40-px block, the same in every image
    corners = np.array([[20, 22]] * 6)  # a 20-px seed inside it: the stacked windows reach past the block
    seed = torch.from_numpy(big[:, 10:30, 10:30].astype(np.float32) / 255)
    assert refine(images, np.arange(6), corners, seed) is None
    small = images.copy()
    small[:, :, 10:50, 12:52] = rng.integers(0, 256, (6, 3, 40, 40)).astype(np.uint8)
    small[:, :, 20:36, 22:38] = big[:, :16, :16]  # a 16-px block: a patch
    found = refine(small, np.arange(6), np.array([[23, 25]] * 6), torch.from_numpy(big[:, 3:13, 3:13].astype(np.float32) / 255))
    # agreement is read on 3 x 3-smoothed pixels, which can move the block's edge by one pixel
    assert found is not None and all(abs(side - 16) <= 1 for side in found.shape[1:])


def test_a_template_no_better_than_a_flat_patch_is_rejected():
    """A flat window of the template's mean colour scores residual 1; a null threshold at or above
    it means flat areas count as hosts, so the pattern is refused whatever its host count."""
    rng = np.random.default_rng(0)
    template = torch.from_numpy(rng.random((3, 8, 8)).astype(np.float32))
    flat = template.mean(dim=(1, 2), keepdim=True).expand(3, 12, 12)[None].contiguous()
    assert abs(float(match_residual(flat, template).min()) - 1.0) < 1e-4
    good = {"threshold": 0.4, "lookalike_ratio": 0.0}
    assert pattern_verdict(40.0, good, 5, 0.5) == "accepted"
    assert pattern_verdict(200.0, {"threshold": 40.5, "lookalike_ratio": 0.44}, 5, 0.5).startswith("rejected: the template matches no better than a flat patch")
    assert pattern_verdict(3.0, good, 5, 0.5) == "fewer than 5 hosts"
    assert pattern_verdict(40.0, {"threshold": 0.4, "lookalike_ratio": 2.0}, 5, 0.5).startswith("rejected: natural look-alikes")


def test_group_alignment_chains_translations_to_the_hub():
    """Copies at known positions, joined by correspondences that each see only a neighbouring
    copy (a chain, plus a weak wrong edge): every member's offset from the hub is the difference
    of the copies' positions, whichever path the spanning tree takes."""
    from ssl_guard.detect.mine.candidates import group_alignment

    rng = np.random.default_rng(2)
    where = {r: rng.uniform(5, 40, 2) for r in range(10, 16)}
    a_rows, b_rows, shift, evidence = [], [], [], []
    for r in range(10, 15):  # a chain 10-11-12-13-14-15, strong edges
        for _ in range(2):
            a_rows.append(r)
            b_rows.append(r + 1)
            shift.append(where[r + 1] - where[r])
            evidence.append(5.0 + rng.random())
    a_rows.append(10)
    b_rows.append(15)
    shift.append(np.array([30.0, -30.0]))  # a chance correspondence: wrong translation, weak
    evidence.append(0.1)
    # the hub is the member with the most correspondences: give 12 two more
    for other in (11, 13):
        a_rows.append(12)
        b_rows.append(other)
        shift.append(where[other] - where[12])
        evidence.append(4.0)
    hub, members, offsets = group_alignment(np.arange(10, 16), np.array(a_rows), np.array(b_rows), np.array(shift), np.array(evidence))
    assert hub == 12 and members[0] == 12 and sorted(members.tolist()) == list(range(10, 16))
    for m, o in zip(members.tolist(), offsets):
        np.testing.assert_allclose(o, where[m] - where[12], atol=1e-6)


def test_refine_finds_the_block_of_copies_resampled_at_other_phases():
    """Copies of one sharp pattern pasted at different sub-pixel phases (bilinear) into different
    content, stacked at whole-pixel corners: pixel for pixel they differ at every edge, yet refine
    cuts the pattern's block (agreement read on smoothed pixels), not None."""
    from ssl_guard.detect.mine.extraction import refine

    rng = np.random.default_rng(4)
    images = _noise_images(30, size=64, seed=4)
    sharp = torch.from_numpy((rng.integers(0, 2, (3, 12, 12)) * 255).astype(np.float32))  # 12 px, 1-px cells
    corners = []
    for i in range(30):
        fy, fx = rng.random(2) - 0.5
        grid = torch.nn.functional.pad(sharp[None], (1, 1, 1, 1), mode="replicate")
        theta = torch.tensor([[[1.0, 0, 2 * fx / 14], [0, 1.0, 2 * fy / 14]]], dtype=torch.float32)
        moved = torch.nn.functional.grid_sample(grid, torch.nn.functional.affine_grid(theta, (1, 3, 14, 14), align_corners=False), align_corners=False)[0, :, 1:13, 1:13]
        y, x = (int(v) for v in rng.integers(14, 38, 2))
        images[i, :, y : y + 12, x : x + 12] = moved.round().clamp(0, 255).byte().numpy()
        corners.append((y + 2, x + 3))  # a seed box inside the copy, off its corner
    seed = torch.from_numpy(images[0, :, corners[0][0] : corners[0][0] + 8, corners[0][1] : corners[0][1] + 8].astype(np.float32) / 255)
    found = refine(images, np.arange(30), np.array(corners), seed)
    assert found is not None  # read pixel for pixel, the phases' differences look like host content
    assert all(abs(side - 12) <= 1 for side in found.shape[1:])


def test_smoothed_matching_reports_the_copy_at_the_templates_own_corner():
    """In its smoothed form a template is matched one pixel inside its border; the corner returned
    is still the copy's top-left, and a copy scores near 0 in both forms while others do not."""
    images = _noise_images(8, size=48, seed=6)
    out, where = _with_pattern(images, [2, 5])
    template = torch.from_numpy(_pattern().astype(np.float32) / 255)
    for smoothed in (False, True):
        residual, corner = residuals(out, np.arange(8), [template], 4, torch.device("cpu"), smoothed=[smoothed])
        for r, (x, y) in where.items():
            assert residual[r, 0] < 0.05 and tuple(corner[r, 0]) == (y, x)
        assert np.delete(residual[:, 0], [2, 5]).min() > 0.2


def test_a_pattern_with_too_few_hosts_in_the_whole_scan_is_not_quarantined():
    from ssl_guard.detect.mine.scoring import drop_thin_patterns

    relative = np.zeros((100, 2))
    relative[:4, 0] = 0.8  # pattern 0: 4 hosts of its own
    relative[10:30, 1] = 0.9  # pattern 1: 20 hosts
    alive, counts, warnings = drop_thin_patterns(relative, 5)
    assert alive.tolist() == [False, True] and counts == [4, 20]
    assert len(warnings) == 1 and "fewer than min_hosts (5)" in warnings[0]


def test_a_dropped_patterns_images_are_scored_by_the_patterns_left():
    from ssl_guard.detect.mine.scoring import drop_thin_patterns

    # two cuts of one trigger: 4 copies match cut 0 best, and cut 1 flags them too (score 0.7)
    relative = np.zeros((100, 3))
    relative[:4, 0], relative[:4, 1] = 0.95, 0.7
    relative[4:30, 1] = 0.9
    relative[50:54, 2] = 0.8  # a natural 4-image repeat no other pattern flags
    relative[52:54, 0] = 0.6  # two of them cut 0 also flags: dropped first, it must not keep them
    alive, counts, warnings = drop_thin_patterns(relative, 5)
    assert alive.tolist() == [False, True, False]
    live = np.where(alive[None, :], relative, 0.0)
    flagged = live.max(axis=1) > 0.5
    assert flagged[:30].all() and flagged.sum() == 30 and counts[1] == 30
    assert len(warnings) == 2


def test_the_host_count_of_a_partly_mined_scan_is_carried_by_the_groups_own_copies():
    from ssl_guard.detect.mine.scoring import default_min_hosts, expected_host_count

    # 50 copies in 50,000 images, 20,000 mined: the group holds 18 mined copies, the random
    # 3,000-image sample happened to hold 1
    n = 50_000
    mined = np.sort(np.random.default_rng(0).choice(n, 20_000, replace=False))
    group_copies = mined[:18]
    sample_copy = np.setdiff1d(np.arange(n), mined)[:1]
    host_rows = np.concatenate([sample_copy, group_copies])
    estimate = expected_host_count(host_rows, 1, 3_000, n, mined)
    assert estimate == 18 * n / 20_000  # 45: the mined share, not the 19 seen or the 16.7 sampled
    assert estimate >= default_min_hosts(n, 20_000)
    # the old estimate (seen, or the sample's share) fell under the default minimum
    assert max(len(host_rows), 1 * n / 3_000) < default_min_hosts(n, 20_000)
    # a scan mined whole: the mined share is the count seen
    assert expected_host_count(np.arange(7), 2, 3_000, 3_925, np.arange(3_925)) == max(7, 2 * 3_925 / 3_000)


def test_the_fft_correlation_is_the_direct_convolution():
    from ssl_guard.detect.mine.scoring import FFT_FROM, cross_correlation

    images = torch.rand(5, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    for h, w in ((3, 4), (13, 12), (17, 20)):
        templates = torch.rand(4, 3, h, w, generator=torch.Generator().manual_seed(h))
        direct = torch.nn.functional.conv2d(images, templates)
        out = cross_correlation(images, templates)
        assert out.shape == direct.shape
        assert torch.allclose(out, direct, atol=1e-4, rtol=1e-5)
    # the two larger sizes go through the FFT, the smallest does not
    assert 3 * 4 * 38 * 33 < FFT_FROM * 40 * 36 <= 13 * 12 * 28 * 25


def test_the_fft_at_a_smooth_length_is_the_direct_convolution_on_prime_sizes():
    from ssl_guard.detect.mine.scoring import cross_correlation, fft_size

    assert [fft_size(n) for n in (1, 7, 11, 64, 97, 107, 113)] == [1, 7, 12, 64, 98, 108, 120]
    images = torch.rand(3, 3, 37, 41, generator=torch.Generator().manual_seed(1))  # two primes
    templates = torch.rand(4, 3, 15, 13, generator=torch.Generator().manual_seed(2))
    direct = torch.nn.functional.conv2d(images, templates)
    out = cross_correlation(images, templates)
    assert out.shape == direct.shape
    assert torch.allclose(out, direct, atol=1e-4, rtol=1e-5)


def test_a_cached_probe_sample_gives_the_residuals_computed_without_it():
    from ssl_guard.detect.mine.scoring import ProbeCache, residuals

    images = _noise_images(60, size=32, seed=4)
    sample = np.array([3, 7, 8, 20, 21, 22, 40, 41, 50], dtype=np.int64)
    probe = np.concatenate([sample, [1, 2, 59]])
    cache = ProbeCache(images, sample, torch.device("cpu"), batch_size=4)
    rng = np.random.default_rng(0)
    templates = [torch.from_numpy(images[5, :, 4:14, 6:15].astype(np.float32) / 255.0), torch.from_numpy(rng.random((3, 8, 8), dtype=np.float32))]
    # batches of 4 mix cached and computed rows (rows 8-11: three cached, one not)
    plain = residuals(images, probe, templates, 4, torch.device("cpu"), smoothed=[False, True])
    cached = residuals(images, probe, templates, 4, torch.device("cpu"), smoothed=[False, True], cache=cache)
    for a, b in zip(plain, cached):
        np.testing.assert_array_equal(a, b)
    # cached rows in another order, among uncached ones, or none of them
    for other in (probe[::-1].copy(), np.array([5, 3, 7]), np.array([1, 2, 59])):
        np.testing.assert_array_equal(residuals(images, other, templates, 4, torch.device("cpu"), cache=cache)[0], residuals(images, other, templates, 4, torch.device("cpu"))[0])
    np.testing.assert_array_equal(cache.positions(np.array([7, 5, 50, 100])), [1, -1, 8, -1])


def test_hosts_that_are_copies_of_one_photo_are_told_from_unrelated_hosts():
    from ssl_guard.detect.mine.scoring import one_photo_repeated, thumbnails

    images = _noise_images(400, size=64, seed=3)
    patch = _noise_images(1, size=64, seed=9)[0, :, :12, :12]
    photo = images[0].copy()
    copies = np.arange(100, 115)
    for k, i in enumerate(copies):  # one photo, shifted by up to 2 px, each with its own patch spot
        images[i] = np.roll(photo, (k % 3 - 1, k % 5 - 2), axis=(1, 2))
    unrelated = np.arange(200, 240)
    boxes = {}
    for i in np.concatenate([copies, unrelated]):
        y, x = 8 + (i * 7) % 40, 8 + (i * 13) % 40
        images[i, :, y : y + 12, x : x + 12] = patch
        boxes[int(i)] = (x, y, x + 12, y + 12)
    cells = thumbnails(images)
    semantic = np.arange(400) % 4
    out = one_photo_repeated(copies, np.array([boxes[int(i)] for i in copies]), cells, 64, semantic, 0.01)
    assert out["repeated"] == 1.0 and out["neighbour_share"] > 0.5 and out["neighbour_chance"] < 0.05
    # unrelated images sharing the same pasted patch: alike only inside the box, left out
    out = one_photo_repeated(unrelated, np.array([boxes[int(i)] for i in unrelated]), cells, 64, semantic, 0.01)
    assert out["repeated"] == 0.0 and out["neighbour_share"] < 0.2
    # compared only within a probe that holds the hosts: the same verdicts
    probe = np.concatenate([np.arange(0, 400, 3), copies])
    assert one_photo_repeated(copies, np.array([boxes[int(i)] for i in copies]), cells, 64, semantic, 0.01, pool=probe)["repeated"] == 1.0
    probe = np.concatenate([np.arange(0, 400, 3), unrelated])
    assert one_photo_repeated(unrelated, np.array([boxes[int(i)] for i in unrelated]), cells, 64, semantic, 0.01, pool=probe)["repeated"] == 0.0
    # a few copies of one photo among the hosts are not a majority
    mixed = np.concatenate([unrelated[:30], copies[:4]])
    assert one_photo_repeated(mixed, np.array([boxes[int(i)] for i in mixed]), cells, 64, semantic, 0.01)["repeated"] == 0.0


def test_the_flat_noise_floor_is_what_a_flat_window_plus_aligned_noise_scores():
    from ssl_guard.detect.mine.scoring import flat_noise_floor

    rng = np.random.default_rng(4)
    tolerance = 0.02
    pale = torch.from_numpy(0.5 + 0.03 * rng.standard_normal((3, 10, 10))).float()
    contrasted = torch.from_numpy(rng.random((3, 10, 10))).float()
    assert flat_noise_floor(contrasted, tolerance, False) > 0.8
    floor = flat_noise_floor(pale, tolerance, False)
    assert 0.0 < floor < 0.3
    # the window that reaches it: the template's mean colour, moved toward the template by noise
    # of the tolerance on every pixel
    d = pale - pale.mean(dim=(1, 2), keepdim=True)
    window = pale.mean(dim=(1, 2), keepdim=True) + tolerance * d.numel() ** 0.5 * d / d.norm()
    assert abs(float(match_residual(window[None], pale).min()) - floor) < 1e-4
    # noise larger than the template itself: no floor
    assert flat_noise_floor(pale, 0.2, False) == 0.0


def test_match_residual_is_its_formula_window_by_window():
    """Both correlation paths: a 4 x 5 template goes through the direct convolution, a 9 x 9 one on
    20 x 20 images through the FFT (`FFT_FROM`)."""
    from ssl_guard.detect.mine.scoring import FFT_FROM, _residuals_of

    assert 4 * 5 * 9 * 7 < FFT_FROM * 12 * 11 and 9 * 9 * 12 * 12 >= FFT_FROM * 20 * 20
    for (H, W), (h, w) in (((12, 11), (4, 5)), ((20, 20), (9, 9))):
        images = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(5))
        templates = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(6))
        out = _residuals_of(images, templates)
        assert out.shape == (2, 2, H - h + 1, W - w + 1)
        for b in range(2):
            for k in range(2):
                t = templates[k]
                spread = ((t - t.mean(dim=(1, 2), keepdim=True)) ** 2).sum()
                for y in range(H - h + 1):
                    for x in range(W - w + 1):
                        expected = ((images[b, :, y : y + h, x : x + w] - t) ** 2).sum() / spread
                        assert abs(float(out[b, k, y, x]) - float(expected)) < 1e-4
