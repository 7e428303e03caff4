"""`mine`: a planted patch is found, localized and flagged, clean data is left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_guard.detect.mine import MineConfig, _block_around, calibrate, detect_mine, match_residual, paste, prevalence_guard
from ssl_guard.encoders import load_encoder
from tests.detect.planted import R, planted_patch_images as _poisoned



def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def stem():
    encoder = load_encoder("random:resnet18?width=64&resolution=64&seed=0")
    return (lambda x: encoder.feature_maps(x, [0])[0]), encoder.stage_stride(0)


def test_planted_patch_is_localized_and_flagged_and_clean_images_are_not(stem):
    features, stride = stem
    images, truth, boxes = _poisoned(240, 30)  # half of the target class, as in the anchors
    semantic = np.array([0 if i < 60 else 1 + i % 3 for i in range(240)])
    detection = detect_mine(images, features, stride, semantic, MineConfig())
    assert detection.flagged[truth].all(), "every poison is flagged"
    assert not detection.flagged[~truth].any(), "no clean image is flagged"
    ious = [_iou(detection.boxes[i], boxes[i]) for i in np.nonzero(truth)[0]]
    assert np.median(ious) > 0.6
    assert len(detection.bank) == 1
    pattern = detection.bank[0]
    assert pattern.targeted is True and pattern.evidence["mask_collapse"] >= 0.8
    # the ranking agrees: every poison scores above every clean image
    assert detection.scores[truth].min() > detection.scores[~truth].max()


def test_no_poison_means_nothing_quarantined(stem):
    features, stride = stem
    images, _, _ = _poisoned(200, 0, seed=1)
    detection = detect_mine(images, features, stride, None, MineConfig())
    assert not detection.flagged.any()
    assert detection.bank == []
    assert any("nothing quarantined" in w for w in detection.warnings)


def test_a_pattern_in_most_of_the_data_is_reported_not_quarantined():
    flagged = np.array([True] * 6 + [False] * 4 + [True, True])
    which = np.array([0] * 10 + [1, 1])
    kept, shares, warnings = prevalence_guard(flagged, which, patterns=2, limit=0.3)
    assert shares == [0.5, 2 / 12]
    assert kept.tolist() == [False] * 10 + [True, True]  # pattern 0 guarded, pattern 1 kept
    assert len(warnings) == 1 and "prevalence guard" in warnings[0]


def test_empty_dataset_gives_an_empty_detection(stem):
    features, stride = stem
    detection = detect_mine(np.zeros((0, 3, R, R), np.uint8), features, stride)
    assert len(detection.scores) == 0 and not detection.flagged.any()


def test_match_residual_is_zero_for_a_copy_and_large_for_other_content():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 3, 32, 32)).astype(np.float32))
    template = image[0, :, 5:15, 7:17].clone()
    residual = match_residual(image, template)
    assert residual.shape == (1, 23, 23)
    assert residual[0, 5, 7] < 1e-4
    other = torch.from_numpy(rng.random((1, 3, 32, 32)).astype(np.float32))
    assert match_residual(other, template).min() > 0.5


def test_paste_keeps_the_requested_grid_phase():
    images = torch.zeros((64, 3, 32, 32))
    template = torch.ones((3, 5, 5))
    pasted, boxes = paste(images, template, np.random.default_rng(0), stride=4, phases=np.array([[1, 3]]))
    assert (boxes[:, 1] % 4 == 1).all() and (boxes[:, 0] % 4 == 3).all()
    assert torch.all(pasted.sum(dim=(1, 2, 3)) == 75)


@pytest.mark.parametrize(
    "sample, expect_ratio_below",
    [
        (np.concatenate([np.full(50, 0.02), np.linspace(0.8, 3.0, 950)]), 0.05),  # copies stand apart
    ],
)
def test_calibrate_separates_pasted_copies(sample, expect_ratio_below):
    threshold, ratio = calibrate(np.full(20, 0.02), sample, ceiling=0.35)
    assert 0.05 <= threshold <= 0.35
    assert (sample < threshold).sum() == 50
    assert ratio < expect_ratio_below


def test_calibrate_flags_a_continuum_of_lookalikes():
    continuum = np.linspace(0.0, 2.0, 1000)
    _, ratio = calibrate(np.full(20, 0.15), continuum, ceiling=0.35)
    assert ratio >= 0.9


def test_block_around_finds_the_consistent_square():
    consistent = np.zeros((26, 26), bool)
    consistent[7:19, 9:21] = True
    assert _block_around(consistent, 10, 16) == (9, 7, 21, 19)
    assert _block_around(np.zeros((26, 26), bool), 10, 16) is None
