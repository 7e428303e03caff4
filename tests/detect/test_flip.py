"""Pasting and the flip test."""

from __future__ import annotations

import numpy as np
import torch

from conftest import embed
from ssl_guard.detect.cluster import ClusterHead, reference_rows, spherical_kmeans
from ssl_guard.detect.flip import flip_test, pad_patches, paste_patches, random_corners


def test_paste_places_each_patch_exactly_and_leaves_inputs_alone():
    images = torch.zeros(3, 3, 16, 16)
    patches = [torch.full((3, 2, 3), 1.0), torch.full((3, 4, 4), 2.0), torch.full((3, 1, 1), 3.0)]
    padded, sizes = pad_patches(patches)
    corners = torch.tensor([[0, 0], [12, 12], [5, 7]])
    out = paste_patches(images, padded, sizes, corners)
    assert (images == 0).all()
    assert (out[0, :, 0:2, 0:3] == 1).all() and out[0].sum() == 3 * 6
    assert (out[1, :, 12:16, 12:16] == 2).all() and out[1].sum() == 2 * 3 * 16
    assert (out[2, :, 5, 7] == 3).all() and out[2].sum() == 9


def test_random_corners_keep_the_patch_inside():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[5, 7]] * 500)
    c = random_corners(sizes, 20, g, margin=2)
    assert c[:, 0].min() >= 2 and c[:, 0].max() <= 20 - 5 - 2
    assert c[:, 1].max() <= 20 - 7 - 2
    assert len(set(map(tuple, c.tolist()))) > 50  # spots vary


def test_trigger_flips_references_and_a_clean_window_does_not(poisoned_set, trigger_encoder):
    emb = embed(trigger_encoder, poisoned_set.images)
    cl = spherical_kmeans(emb, 5)
    head = ClusterHead(trigger_encoder, cl.centroids).eval()
    refs = reference_rows(cl, 32)
    ref_x = torch.from_numpy(np.array(poisoned_set.images[refs])).float() / 255
    ref_c = head.assign(ref_x).numpy()
    poison_cluster = np.bincount(cl.assignments[poisoned_set.poisoned]).argmax()
    trigger = torch.from_numpy(poisoned_set.trigger).float() / 255
    clean_row = np.flatnonzero(~poisoned_set.poisoned)[0]
    clean_patch = torch.from_numpy(np.array(poisoned_set.images[clean_row, :, 10:18, 10:18])).float() / 255
    res = flip_test(head, [trigger, clean_patch], np.array([poison_cluster, poison_cluster]), ref_x, ref_c, torch.Generator().manual_seed(0))
    assert res.rates[0] > 0.9
    assert res.rates[1] < 0.1
    assert res.forwards == 2 * len(refs)
    assert (res.eligible == (ref_c != poison_cluster).sum()).all()


def test_flip_test_with_nothing_to_test():
    res = flip_test(None, [], np.array([]), torch.zeros(4, 3, 8, 8), np.zeros(4), torch.Generator())
    assert len(res.rates) == 0 and res.forwards == 0
