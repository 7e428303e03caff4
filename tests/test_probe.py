"""The backdoor probe: clean accuracy, attack success and its baseline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ssl_guard.errors import ConfigError
from ssl_guard.probe import Embedded, backdoor_effect, embed_split, knn_predict, linear_predict

CLASSES = ["a", "b", "t"]


def clustered(n_per_class: int, seed: int, centres: np.ndarray, noise: float = 0.1) -> Embedded:
    rng = np.random.default_rng(seed)
    labels = [c for c in CLASSES for _ in range(n_per_class)]
    features = np.repeat(centres, n_per_class, axis=0) + noise * rng.normal(size=(3 * n_per_class, centres.shape[1]))
    return Embedded((features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32), labels)


CENTRES = np.eye(3, 8)


@pytest.mark.parametrize("probe", ["knn", "linear"])
def test_a_planted_backdoor_is_measured_and_a_clean_encoder_is_not(probe):
    train, clean = clustered(30, 0, CENTRES), clustered(10, 1, CENTRES)
    # the trigger drags every image onto the target's embedding
    dragged = clustered(10, 2, np.repeat(CENTRES[2:3], 3, axis=0))
    dragged.labels = clean.labels
    effect = backdoor_effect(train, clean, dragged, "t", probe=probe)
    assert effect.clean_accuracy == 1.0
    assert effect.attack_success_rate == 1.0 and effect.target_false_positives == 20 and effect.non_target == 20
    assert effect.clean_to_target_rate == 0.0
    harmless = backdoor_effect(train, clean, clustered(10, 3, CENTRES), "t", probe=probe)
    assert harmless.attack_success_rate == 0.0 and harmless.triggered_accuracy == 1.0


def test_knn_votes_are_similarity_weighted():
    train = np.array([[1, 0], [0.8, 0.6], [0.8, 0.6]], np.float32)
    labels = np.array([0, 1, 1])
    # k=3: one very close neighbour of class 0 outweighs two farther ones of class 1
    assert knn_predict(train, labels, np.array([[1, 0]], np.float32), classes=2, k=3).tolist() == [0]
    assert knn_predict(train, labels, np.array([[0.8, 0.6]], np.float32), classes=2, k=3).tolist() == [1]


def test_linear_probe_separates_separable_classes():
    train = clustered(20, 0, CENTRES)
    labels = np.array([CLASSES.index(c) for c in train.labels])
    assert (linear_predict(train.features, labels, train.features, 3) == labels).all()


def test_unknown_target_or_probe_is_refused():
    train = clustered(5, 0, CENTRES)
    with pytest.raises(ConfigError, match="not a class"):
        backdoor_effect(train, train, train, "zebra")
    with pytest.raises(ConfigError, match="unknown"):
        backdoor_effect(train, train, train, "t", probe="svm")


def test_embed_split_reads_labelled_images_at_the_encoder_resolution(image_folder):
    import torch

    seen = []

    class MeanColour:
        """A stand-in encoder: the mean colour of each image, L2-normalised."""

        config = SimpleNamespace(resolution=16)
        device = torch.device("cpu")

        def __call__(self, images):
            seen.append(tuple(images.shape[1:]))
            assert images.dtype == torch.float32 and float(images.max()) <= 1.0
            features = images.mean(dim=(2, 3))
            return features / features.norm(dim=1, keepdim=True)

    embedded = embed_split(MeanColour(), [str(image_folder)], batch_size=10, workers=0)
    assert embedded.features.shape == (48, 3)
    assert sorted(set(embedded.labels)) == ["blocks", "circles", "rings", "stripes"]
    assert set(seen) == {(3, 16, 16)}
    assert np.allclose(np.linalg.norm(embedded.features, axis=1), 1.0, atol=1e-5)
