"""Cluster activation masking: window grid, batched masked copies, fills, maps and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import RESOLUTION, embed
from ssl_guard.detect.cluster import ClusterHead, spherical_kmeans
from ssl_guard.detect.masking import (
    box_iou,
    box_masks,
    cluster_activation_masking,
    default_stride,
    default_windows,
    fill_images,
    map_boxes,
    masked_copies,
    window_boxes,
)


def test_window_grid_covers_the_image_at_every_size():
    boxes = window_boxes(48, [0.125, 0.25], 6 / 48)
    assert set((boxes[:, 2] - boxes[:, 0]).tolist()) == {6, 12}
    masks = box_masks(boxes, 48)
    for side in (6, 12):
        sel = (boxes[:, 2] - boxes[:, 0]) == side
        assert masks[torch.from_numpy(sel)].any(dim=0).all()
    assert boxes.min() >= 0 and boxes.max() <= 48


def test_default_windows_and_stride_follow_resolution():
    assert [round(w * 64) for w in default_windows(64)] == [8, 16]
    assert [round(w * 224) for w in default_windows(224)] == [28, 56]
    assert min(round(w * 24) for w in default_windows(24)) >= 4
    for r in (32, 64, 224):
        w = default_windows(r)
        assert len(window_boxes(r, w, default_stride(r, w))) <= 128


def test_masked_copies_occlude_exactly_one_window_each():
    x = torch.rand(2, 3, 16, 16)
    boxes = window_boxes(16, [0.25], 0.25)
    masks = box_masks(boxes, 16)
    fill = torch.zeros_like(x)
    out = masked_copies(x, masks, fill).view(2, len(boxes), 3, 16, 16)
    for i in range(2):
        for w, (x0, y0, x1, y1) in enumerate(boxes):
            assert (out[i, w, :, y0:y1, x0:x1] == 0).all()
            changed = (out[i, w] != x[i]).any(dim=0)
            assert changed.sum() <= (x1 - x0) * (y1 - y0)


@pytest.mark.parametrize("fill", ["blur", "mean"])
def test_fills_erase_a_small_pattern_and_keep_colour(fill):
    x = torch.full((1, 3, 32, 32), 0.5)
    x[:, :, 8:12, 8:12] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    f = fill_images(x, fill)
    assert f.shape == x.shape
    assert (f[:, 0, 8:12, 8:12] - f[:, 1, 8:12, 8:12]).abs().max() < 0.35  # the red square is gone
    assert abs(float(f.mean()) - float(x.mean())) < 0.02


def test_map_box_is_the_hot_region_around_the_peak():
    maps = torch.zeros(2, 32, 32)
    maps[0, 10:18, 4:12] = 1.0
    maps[0, 28:30, 28:30] = 0.3  # a weaker hot spot elsewhere does not stretch the box
    maps[1, 0:4, 20:30] = 2.0
    boxes = map_boxes(maps).numpy()
    assert boxes.tolist() == [[4, 10, 12, 18], [20, 0, 30, 4]]


def test_a_map_with_no_positive_value_gets_the_box_of_its_largest_pixel():
    # occluding any window raised the activation: every drop is negative (seen on a real encoder)
    maps = -torch.rand(2, 16, 16) - 0.1
    maps[0, 5, 9] = -0.01
    maps[1, 0, 15] = -0.05
    assert map_boxes(maps).numpy().tolist() == [[9, 5, 10, 6], [15, 0, 16, 1]]


def test_box_iou():
    assert box_iou(np.array([[0, 0, 4, 4]]), np.array([[0, 0, 4, 4]]))[0] == 1
    assert box_iou(np.array([[0, 0, 4, 4]]), np.array([[2, 0, 6, 4]]))[0] == pytest.approx(1 / 3)
    assert box_iou(np.array([[0, 0, 2, 2]]), np.array([[5, 5, 6, 6]]))[0] == 0


@pytest.mark.parametrize("fill", ["blur", "mean"])
def test_masking_localizes_the_trigger_of_a_backdoored_encoder(fill, poisoned_set, trigger_encoder):
    emb = embed(trigger_encoder, poisoned_set.images)
    cl = spherical_kmeans(emb, 5)
    head = ClusterHead(trigger_encoder, cl.centroids).eval()
    rows = np.flatnonzero(poisoned_set.poisoned)
    x = torch.from_numpy(np.array(poisoned_set.images[rows])).float() / 255
    w = default_windows(RESOLUTION)
    boxes = window_boxes(RESOLUTION, w, default_stride(RESOLUTION, w))
    res = cluster_activation_masking(head, x, torch.from_numpy(cl.assignments[rows]), boxes, fill, max_batch=300)
    truth = poisoned_set.boxes[rows]
    iou = box_iou(res.boxes, truth)
    assert iou.mean() > 0.3
    # the box holds the trigger and is not much larger than the 12 px grid cell around it
    inter_w = np.clip(np.minimum(res.boxes[:, 2], truth[:, 2]) - np.maximum(res.boxes[:, 0], truth[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(res.boxes[:, 3], truth[:, 3]) - np.maximum(res.boxes[:, 1], truth[:, 1]), 0, None)
    held = inter_w * inter_h / ((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]))
    assert (held >= 0.75).mean() >= 0.9
    assert np.median((res.boxes[:, 2] - res.boxes[:, 0]) * (res.boxes[:, 3] - res.boxes[:, 1])) <= 16 * 16
    assert (res.box_drop > 0.3).all()  # occluding the trigger throws the image out of its cluster
    assert res.maps.shape == (len(rows), RESOLUTION, RESOLUTION)
    assert res.forwards == len(rows) * (len(boxes) + 2)
    # a clean image loses little activation to any single window
    clean = np.flatnonzero(~poisoned_set.poisoned)[:8]
    xc = torch.from_numpy(np.array(poisoned_set.images[clean])).float() / 255
    rc = cluster_activation_masking(head, xc, torch.from_numpy(cl.assignments[clean]), boxes, fill)
    assert np.median(rc.box_drop) < 0.1
