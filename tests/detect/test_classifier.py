"""The poison classifier: net shapes, pasting, and that it learns a pasted bank trigger."""

from __future__ import annotations

import numpy as np
import torch

from ssl_guard.detect import classifier as clf
from ssl_guard.detect.decide import auroc


def test_net_shapes_and_input_size():
    for r in (24, 32, 48, 64, 224):
        size = clf.classifier_input(r)
        assert 32 <= size <= 48
        net = clf.PoisonNet(8, size).eval()
        assert net(torch.rand(3, 3, size, size)).shape == (3,)
    assert clf.default_steps(100) == 102 and clf.default_steps(5000) == 200 and clf.default_steps(10**6) == 500


def test_bank_variants_and_paste_touch_only_positives():
    bank = [torch.rand(3, 8, 8), torch.rand(3, 6, 10)]
    variants = clf.bank_variants(bank, 32)
    assert len(variants) == 2 * len(clf.PASTE_SCALES)
    assert all(3 <= v.shape[1] <= 16 and 3 <= v.shape[2] <= 16 for v in variants)
    x = torch.zeros(4, 3, 32, 32)
    positive = torch.tensor([True, False, True, False])
    out = clf.paste_bank(x, variants, positive, torch.Generator().manual_seed(0))
    assert (out[~positive] == 0).all() and (out[positive].flatten(1).abs().sum(1) > 0).all()
    assert (x == 0).all()


def test_learns_a_bank_window_and_finds_the_real_poisons(poisoned_set):
    """Trained on clean images with one bank window (the trigger plus a 2 px border of its host)
    pasted in, the classifier ranks the real poisons above held-out clean images."""
    ds = poisoned_set
    clean = np.flatnonzero(~ds.poisoned)
    train, held = clean[:64], clean[64:]
    load = lambda rows: torch.from_numpy(np.array(ds.images[rows])).float() / 255  # noqa: E731
    host = np.flatnonzero(ds.poisoned)[0]
    x0, y0, x1, y1 = ds.boxes[host]
    window = load([host])[0, :, y0 - 2 : y1 + 2, x0 - 2 : x1 + 2]
    nets = clf.train_classifiers(load, train, [window], ds.images.shape[-1], models=1, steps=100, lr=5e-3, seed=0)
    negatives = clf.predict(nets, load(held), 48).numpy()
    real = clf.predict(nets, load(np.flatnonzero(ds.poisoned)), 48).numpy()
    assert auroc(real, negatives) > 0.8
