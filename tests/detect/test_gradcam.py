"""Grad-CAM of the cluster head (the PatchSearch localizer)."""

from __future__ import annotations

import numpy as np
import torch

from conftest import RESOLUTION, embed
from ssl_guard.detect.cluster import ClusterHead, spherical_kmeans
from ssl_guard.detect.gradcam import gradcam_windows, stage_module
from ssl_guard.detect.masking import box_iou


def test_stage_module_finds_layer3_of_the_project_encoder(random_encoder):
    assert stage_module(random_encoder, 3, RESOLUTION) is random_encoder.layer3


def test_gradcam_on_a_random_encoder_gives_windows_of_the_asked_size(random_encoder, poisoned_set):
    emb = embed(random_encoder, poisoned_set.images)
    cl = spherical_kmeans(emb, 4)
    head = ClusterHead(random_encoder, cl.centroids).eval()
    rows = np.arange(6)
    x = torch.from_numpy(np.array(poisoned_set.images[rows])).float() / 255
    res = gradcam_windows(head, random_encoder.layer3, x, torch.from_numpy(cl.assignments[rows]), window=12)
    assert res.maps.shape == (6, RESOLUTION, RESOLUTION)
    assert res.maps.min() >= 0 and res.maps.max() <= 1 + 1e-6
    assert ((res.boxes[:, 2] - res.boxes[:, 0]) == 12).all() and res.boxes.min() >= 0 and res.boxes.max() <= RESOLUTION
    # the encoder's parameters are left without gradients
    assert all(p.grad is None for p in random_encoder.parameters())


def test_gradcam_points_at_the_trigger_of_a_backdoored_encoder(poisoned_set, trigger_encoder):
    emb = embed(trigger_encoder, poisoned_set.images)
    cl = spherical_kmeans(emb, 5)
    head = ClusterHead(trigger_encoder, cl.centroids).eval()
    rows = np.flatnonzero(poisoned_set.poisoned)
    x = torch.from_numpy(np.array(poisoned_set.images[rows])).float() / 255
    module = stage_module(trigger_encoder, 3, RESOLUTION)
    res = gradcam_windows(head, module, x, torch.from_numpy(cl.assignments[rows]), window=12)
    # the 12 px window overlaps the 8 px trigger in over half the poisoned images (7 of 12 when
    # measured; masking holds the trigger in all 12, test_masking.py)
    assert (box_iou(res.boxes, poisoned_set.boxes[rows]) > 0).mean() >= 0.5
