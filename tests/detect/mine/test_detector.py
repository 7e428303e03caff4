"""The `mine` detector end to end on generated arrays: a planted patch is found, localised and
flagged; clean data, and data whose only repeat is a natural near-duplicate, are left alone."""

from __future__ import annotations

import numpy as np
import torch
import pytest

from ssl_guard.detect.mine import MineConfig, detect_mine
from tests.detect.planted import R, planted_patch_images


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def planted():
    return planted_patch_images(400, 24)


def test_planted_patch_is_localised_and_flagged_and_clean_images_are_not(planted):
    images, truth, boxes = planted
    semantic = np.array([0 if i < 100 else 1 + i % 3 for i in range(len(images))])
    detection = detect_mine(images, semantic, MineConfig())
    assert detection.flagged[truth].all(), "every poison is flagged"
    assert not detection.flagged[~truth].any(), "no clean image is flagged"
    assert detection.scores[truth].min() > detection.scores[~truth].max()
    ious = [_iou(detection.boxes[i], boxes[i]) for i in np.nonzero(truth)[0]]
    assert np.median(ious) > 0.5
    assert len(detection.bank) == 1
    pattern = detection.bank[0]
    assert pattern.hosts == truth.sum() and pattern.targeted is True
    # the threshold comes from the scan's null, below the unrelated bulk; the copies sit far below it
    assert pattern.evidence["threshold"] < pattern.evidence["bulk_median"]
    assert pattern.evidence["host_residual"] < 0.25 * pattern.evidence["threshold"]


def test_the_early_screen_rejects_a_seed_only_where_the_full_test_finds_too_few_hosts():
    from ssl_guard.detect.mine.detector import _screen, _test_pattern
    from ssl_guard.detect.mine.edits import as_float

    config, cpu = MineConfig(), torch.device("cpu")
    images, truth, boxes = planted_patch_images(1200, 40, seed=6)
    sample = np.arange(0, 1200, 2)  # the full test's random sample (600), its screen every 4th
    screened = sample[::4]

    def both(group: np.ndarray, box) -> tuple[bool, int]:
        x0, y0, x1, y1 = (int(v) for v in box)
        template = as_float(images[group[-1] : group[-1] + 1, :, y0:y1, x0:x1])[0].contiguous()
        probe = np.concatenate([sample, np.setdiff1d(group, sample)])
        null, residual, _ = _test_pattern(images, probe, len(sample), len(images), template, config, cpu, 0.02)
        screen, known = _screen(images, np.concatenate([screened, np.setdiff1d(group, screened)]), len(screened), len(images), len(sample), template, config, cpu)
        # the full test, reusing the screen's residuals, decides as it does without them
        reused, residual_reused, _ = _test_pattern(images, probe, len(sample), len(images), template, config, cpu, 0.02, known=known)
        assert reused == null and np.array_equal(residual_reused, residual)
        return screen, int((residual < null["threshold"]).sum())

    # seeds cut from clean scenes (groups of three clean images, a 12-px patch of the last)
    rng = np.random.default_rng(0)
    clean = np.nonzero(~truth)[0]
    outcomes = [both(np.sort(rng.choice(clean, 3, replace=False)), (x, y, x + 12, y + 12)) for x, y in rng.integers(4, 48, (8, 2))]
    assert all(hosts < 3 for screen, hosts in outcomes if not screen), "a seed the screen rejects fails the full test too"
    # (on these scenes 6 of the 8 seeds fail the full test; the screen rejects 3 of them early)
    assert sum(not screen for screen, _ in outcomes) >= 3, "clean seeds are rejected early"
    # a seed cut from a trigger's copy passes on to the full test, which finds its hosts
    poisons = np.nonzero(truth)[0]
    screen, hosts = both(poisons[:3], boxes[poisons[2]])
    assert screen and hosts >= 15  # about half of the 40 copies lie in the sample


def test_an_untargeted_pattern_is_found_and_read_as_untargeted():
    images, truth, _ = planted_patch_images(400, 24, seed=2, spread=True)
    semantic = np.array([0 if i < 100 else 1 + i % 3 for i in range(len(images))])
    detection = detect_mine(images, semantic, MineConfig())
    assert detection.flagged[truth].mean() >= 0.9 and not detection.flagged[~truth].any()
    assert detection.bank and detection.bank[0].targeted is False


def test_no_poison_means_nothing_quarantined():
    images, _, _ = planted_patch_images(300, 0, seed=1)
    detection = detect_mine(images, None, MineConfig())
    assert not detection.flagged.any()
    assert detection.bank == []
    assert any("nothing quarantined" in w for w in detection.warnings)


def test_natural_near_duplicates_are_not_a_trigger():
    images, _, _ = planted_patch_images(300, 0, seed=4)
    rng = np.random.default_rng(0)
    # 10 photos each appear 3 more times, whole: a repeat of a whole image is not a pasted patch
    for source in range(10):
        for target in rng.choice(np.arange(100, 300), 3, replace=False):
            images[target] = images[source]
    detection = detect_mine(images, None, MineConfig())
    assert detection.flagged.sum() <= 0.001 * len(images) + 1e-9


def test_empty_dataset_gives_an_empty_detection():
    detection = detect_mine(np.zeros((0, 3, R, R), np.uint8))
    assert len(detection.scores) == 0 and not detection.flagged.any()


def test_two_triggers_whose_hosts_are_joined_into_one_group_are_both_found():
    # 24 images carry trigger A, 24 trigger B, and 6 of them carry both: those bridge the two
    # sets of copies into one candidate group, which must still yield both patterns
    from PIL import Image

    from ssl_guard import synthetic

    rng = np.random.default_rng(11)
    n = 400
    triggers = [synthetic.trigger_patch(seed=3, size=12), synthetic.trigger_patch(seed=9, size=12)]
    carriers = [set(range(0, 24)), set(range(18, 42))]
    images = np.zeros((n, 3, R, R), np.uint8)
    truth = np.zeros((2, n), bool)
    for i in range(n):
        scene = synthetic.scene(rng, i % 4, 96).resize((R, R), Image.BILINEAR)
        spots = [(int(rng.integers(4, 20)), int(rng.integers(8, 44))), (int(rng.integers(36, 50)), int(rng.integers(8, 44)))]
        for t in range(2):
            if i in carriers[t]:
                scene.paste(triggers[t], spots[t])
                truth[t, i] = True
        images[i] = np.asarray(scene).transpose(2, 0, 1)
    detection = detect_mine(images, None, MineConfig())
    for t in range(2):
        assert detection.flagged[truth[t]].mean() >= 0.9, f"trigger {t}: {detection.flagged[truth[t]].sum()} of 24 flagged"
    assert not detection.flagged[~truth.any(0)].any()


def _with_resized_copies(n: int = 400, regular: int = 30, resized: int = 4, scale: float = 0.85, seed: int = 12):
    """`regular` images with a 12-px trigger and `resized` with the same trigger resized by
    `scale` (too few to be a pattern of their own: `min_hosts` is 5)."""
    from PIL import Image

    from ssl_guard import synthetic

    rng = np.random.default_rng(seed)
    trigger = synthetic.trigger_patch(seed=3, size=12)
    small = trigger.resize((round(12 * scale),) * 2, Image.BILINEAR)
    images = np.zeros((n, 3, R, R), np.uint8)
    truth = np.zeros(n, int)  # 0 clean, 1 regular copy, 2 resized copy
    for i in range(n):
        scene = synthetic.scene(rng, i % 4, 96).resize((R, R), Image.BILINEAR)
        if i < regular + resized:
            scene.paste(trigger if i < regular else small, (int(rng.integers(8, 44)), int(rng.integers(8, 44))))
            truth[i] = 1 if i < regular else 2
        images[i] = np.asarray(scene).transpose(2, 0, 1)
    return images, truth


def test_resized_copies_are_flagged_with_the_scaled_variants_and_no_clean_image_is():
    images, truth = _with_resized_copies()
    detection = detect_mine(images, None, MineConfig())
    assert detection.flagged[truth == 1].all() and detection.flagged[truth == 2].all()
    assert not detection.flagged[truth == 0].any()
    # the variants were matched and some kept, each with its own line under a flat patch's 1
    lines = {k: v for k, v in detection.bank[0].evidence.items() if k.startswith("threshold_at_scale_")}
    assert lines and all(0 < v < 1 for v in lines.values())



def _blurred_refine(images, hosts, corners, template, copy_of=None):
    """A stand-in for `refine` that finds the hosts' shared block but returns it blurred flat, as
    the median of copies of a fine texture at other sub-pixel phases is: it matches none of them."""
    from ssl_guard.detect.mine import extraction

    block = extraction.refine(images, hosts, corners, template, copy_of)
    return None if block is None else block.mean(dim=(1, 2), keepdim=True).expand_as(block).contiguous() + 0.01 * torch.rand_like(block)


def test_a_seed_is_kept_when_its_hosts_share_a_block_whose_median_matches_worse(planted, monkeypatch):
    from ssl_guard.detect.mine import detector

    images, truth, _ = planted
    monkeypatch.setattr(detector, "refine", _blurred_refine)
    detection = detect_mine(images, None, MineConfig())
    assert detection.flagged[truth].mean() >= 0.9 and not detection.flagged[~truth].any()
    # ... but when the hosts agree around the seed as much as on it (no block), nothing is kept
    monkeypatch.setattr(detector, "refine", lambda *args, **kwargs: None)
    detection = detect_mine(images, None, MineConfig())
    assert not detection.flagged.any()


def test_a_smooth_gradient_square_with_no_corner_of_its_own_is_found_through_its_smooth_region():
    # a 10-px radial gradient (at most 3 levels a pixel, under the scenes' median neighbour
    # difference; radial, since every generated scene's background is a linear ramp): its only
    # corners are where it meets its host, so the corner correspondences do not tie its copies;
    # its smooth region repeats in size and colour, and its template's threshold reaches a flat
    # patch's residual, so its hosts must be closer to it than to its flat mean colour
    from PIL import Image

    from ssl_guard import synthetic

    rng = np.random.default_rng(21)
    yy, xx = np.mgrid[0:10, 0:10] / 9 - 0.5
    t = np.sqrt(yy**2 + xx**2) / np.sqrt(0.5)
    ramp = np.stack([90 + 24 * t, 20 + 9 * t, 120 - 24 * t]).round().astype(np.uint8)
    images = np.zeros((400, 3, R, R), np.uint8)
    truth = np.zeros(400, bool)
    for i in range(400):
        images[i] = np.asarray(synthetic.scene(rng, i % 4, 96).resize((R, R), Image.BILINEAR)).transpose(2, 0, 1)
        if i < 30:
            y, x = (int(v) for v in rng.integers(8, R - 18, 2))
            images[i, :, y : y + 10, x : x + 10] = ramp
            truth[i] = True
    detection = detect_mine(images, None, MineConfig())
    assert detection.flagged[truth].mean() >= 0.9, f"{detection.flagged[truth].sum()} of 30 flagged"
    assert not detection.flagged[~truth].any()


def _with_bled_copies(n: int = 400, regular: int = 30, bled: int = 8, seed: int = 13):
    """`regular` images with a 12-px trigger pasted as it is, and `bled` whose trigger's
    one-pixel border is replaced by other content (its negative: the most a host can differ
    there), as a resize filter or JPEG's chroma subsampling mix the host into a small patch's
    edge."""
    from PIL import Image

    from ssl_guard import synthetic

    rng = np.random.default_rng(seed)
    # a fine random colour code (1-px cells), which smoothing blurs: matched as it is
    cells = rng.integers(0, 2, (12, 12, 3)) * 200.0 + 30.0
    trigger = cells.astype(np.float32)
    images = np.zeros((n, 3, R, R), np.uint8)
    truth = np.zeros(n, int)  # 0 clean, 1 regular copy, 2 bled copy
    for i in range(n):
        scene = np.asarray(synthetic.scene(rng, i % 4, 96).resize((R, R), Image.BILINEAR)).astype(np.float32)
        if i < regular + bled:
            y, x = (int(v) for v in rng.integers(8, 44, 2))
            patch = trigger.copy()
            if i >= regular:
                ring = np.ones((12, 12), bool)
                ring[1:-1, 1:-1] = False
                patch[ring] = 255 - patch[ring]
            scene[y : y + 12, x : x + 12] = patch
            truth[i] = 1 if i < regular else 2
        images[i] = np.round(scene).astype(np.uint8).transpose(2, 0, 1)
    return images, truth


def test_copies_whose_border_the_host_bled_into_are_flagged_with_the_cut_variant(monkeypatch):
    from ssl_guard.detect.mine import detector

    images, truth = _with_bled_copies()
    detection = detect_mine(images, None, MineConfig())
    assert detection.flagged[truth == 1].all() and detection.flagged[truth == 2].all()
    assert not detection.flagged[truth == 0].any()
    assert 0 < detection.bank[0].evidence["threshold_cut"] < 1
    # without the cut variant the bled copies are missed
    monkeypatch.setattr(detector, "border_cut", lambda template, smoothed: None)
    without = detect_mine(images, None, MineConfig())
    assert without.flagged[truth == 1].all() and not without.flagged[truth == 2].all()
    assert "threshold_cut" not in without.bank[0].evidence


def test_border_cut_only_for_templates_matched_as_they_are_and_large_enough():
    from ssl_guard.detect.mine.scoring import SMOOTHED_FROM, border_cut

    template = torch.rand(3, 10, SMOOTHED_FROM + 2)
    cut = border_cut(template, smoothed=False)
    assert cut.shape == (3, 8, SMOOTHED_FROM) and torch.equal(cut, template[:, 1:-1, 1:-1])
    assert border_cut(template, smoothed=True) is None  # the smoothed form cuts its border already
    assert border_cut(torch.rand(3, 10, SMOOTHED_FROM + 1), smoothed=False) is None


def test_hosts_are_counted_among_all_mined_images_when_the_probe_holds_few():
    from ssl_guard.detect.mine.detector import _test_pattern, count_mined_hosts
    from ssl_guard.detect.mine.edits import as_float

    config, cpu = MineConfig(), torch.device("cpu")
    images, truth, boxes = planted_patch_images(1200, 40, seed=6)
    poisons = np.nonzero(truth)[0]
    # a probe sample that holds 2 of the 40 copies, and a group of 3 more
    clean = np.nonzero(~truth)[0]
    sample = np.sort(np.concatenate([clean[:400], poisons[:2]]))
    group = poisons[2:5]
    probe = np.concatenate([sample, group])
    x0, y0, x1, y1 = (int(v) for v in boxes[poisons[2]])
    template = as_float(images[poisons[2] : poisons[2] + 1, :, y0:y1, x0:x1])[0].contiguous()
    null, residual, _ = _test_pattern(images, probe, len(sample), len(images), template, config, cpu, 0.02)
    hosts = residual < null["threshold"]
    assert set(probe[hosts]) == set(poisons[:5])  # the probe sees 5 copies
    # mined: every image but 100 (10 of them copies): the count finds the other 30 copies there
    mined = np.sort(np.setdiff1d(np.arange(1200), np.concatenate([clean[-90:], poisons[-10:]])))
    assert count_mined_hosts(images, probe[hosts], mined, probe, template, null, 0.02, config, cpu) == 30
    # the same with no mined image outside the probe: only the probe's mined hosts
    assert count_mined_hosts(images, probe[hosts], probe, probe, template, null, 0.02, config, cpu) == 5
