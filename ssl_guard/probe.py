"""The backdoor's effect downstream: a probe on an encoder's embeddings, clean and triggered.

As PatchSearch and SSL-Backdoor measure it: fit a probe (weighted k-NN or linear) on the
embeddings of a clean labelled split, then report its clean accuracy on clean validation images,
and on the triggered validation split (`ssl-guard poison --split val`) the *attack success rate*,
the share of non-target images the probe sends to the target class, with the same share on the
clean validation images as the baseline it must be compared with. `target_false_positives` is the
count behind the attack success rate (PatchSearch's "FP" of the target class).

The k-NN probe is the weighted vote of Wu et al. (2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", sec. 3.4): each of the k nearest training embeddings
(cosine, faiss exact search) votes for its class with weight exp(similarity / 0.07).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ssl_guard.errors import ConfigError, EmptyDatasetError

KNN_TEMPERATURE = 0.07


@dataclass
class Embedded:
    """Embeddings of a labelled split: `features` (N, D) float32 L2-normalised, `labels` (N,) str."""

    features: np.ndarray
    labels: list[str]


def knn_predict(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, classes: int, k: int = 20) -> np.ndarray:
    """Weighted k-NN class of each query row.

    Args:
        train: (N, D) float32 L2-normalised; train_labels: (N,) int in [0, classes).
        query: (M, D) float32 L2-normalised.
    Returns:
        (M,) int predicted classes.
    """
    import faiss

    index = faiss.IndexFlatIP(train.shape[1])
    index.add(np.ascontiguousarray(train, dtype=np.float32))
    k = min(k, len(train))
    similarity, neighbours = index.search(np.ascontiguousarray(query, dtype=np.float32), k)
    weights = np.exp(similarity / KNN_TEMPERATURE)
    votes = np.zeros((len(query), classes), np.float64)
    np.add.at(votes, (np.repeat(np.arange(len(query)), k), train_labels[neighbours].reshape(-1)), weights.reshape(-1))
    return votes.argmax(axis=1)


def linear_predict(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, classes: int, steps: int = 300) -> np.ndarray:
    """Class of each query row from a multinomial logistic regression fitted on `train`; shapes as
    in `knn_predict`."""
    return linear_apply(fit_linear(train, train_labels, classes, steps), query)


def linear_apply(weights: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(M,) int classes of `query` (M, D) under `weights` (D + 1, C) from `fit_linear`."""
    q = np.asarray(query, np.float32)
    return (np.hstack([q * 10.0, np.ones((len(q), 1), np.float32)]) @ weights).argmax(axis=1)


def fit_linear(train: np.ndarray, train_labels: np.ndarray, classes: int, steps: int = 300) -> np.ndarray:
    """(D + 1, C) weights of a multinomial logistic regression on `train` (N, D), labels (N,) int.

    Full-batch Nesterov gradient descent from zero on the cross-entropy of `10 * x @ W + b` plus a
    small L2 penalty: a convex problem, so the fit is deterministic and needs no seed. Plain numpy,
    as torch's optimizers cost seconds to import for a problem this small.
    """
    x = np.asarray(train, np.float32)
    x = np.hstack([x * 10.0, np.ones((len(x), 1), np.float32)])  # unit-norm features give tiny logits: scale them
    targets = np.eye(classes, dtype=np.float32)[np.asarray(train_labels)]
    penalty = 1e-4
    # step 1/L, L bounding the loss's curvature: 0.5 * the top eigenvalue of x.T x / n (power
    # iteration, with a 10% margin for its under-estimate) plus the penalty's
    vector = np.ones(x.shape[1], np.float32) / np.sqrt(x.shape[1])
    for _ in range(30):
        vector = x.T @ (x @ vector) / len(x)
        top = float(np.linalg.norm(vector))
        vector /= top
    step = 1.0 / (0.55 * top + 2 * penalty)
    weights = np.zeros((x.shape[1], classes), np.float32)
    previous = weights
    for t in range(1, steps + 1):
        look = weights + (t - 1) / (t + 2) * (weights - previous)
        logits = x @ look
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        gradient = x.T @ (probabilities - targets) / len(x) + 2 * penalty * look
        previous, weights = weights, look - step * gradient
    return weights


@dataclass
class BackdoorEffect:
    """A probe's clean accuracy and the attack's success on triggered images."""

    probe: str
    target: str
    clean_accuracy: float
    attack_success_rate: float
    target_false_positives: int
    non_target: int
    clean_to_target_rate: float
    triggered_accuracy: float
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "probe": self.probe,
            "target": self.target,
            "clean_accuracy": self.clean_accuracy,
            "attack_success_rate": self.attack_success_rate,
            "target_false_positives": self.target_false_positives,
            "non_target": self.non_target,
            "clean_to_target_rate": self.clean_to_target_rate,
            "triggered_accuracy": self.triggered_accuracy,
        }


def backdoor_effect(train: Embedded, clean_val: Embedded, triggered: Embedded, target: str, probe: str = "knn", k: int = 20) -> BackdoorEffect:
    """Fit the probe on `train` and measure it on `clean_val` and `triggered` (pure, no encoder).

    Raises:
        ConfigError: an unknown probe, or a target class the training split does not have.
    """
    classes = sorted(set(train.labels))
    if target not in classes:
        raise ConfigError(f"target class {target!r} is not a class of the probe's training data", f"classes: {', '.join(classes[:12])}")
    if probe not in ("knn", "linear"):
        raise ConfigError(f"--probe {probe!r} is unknown", "use knn or linear")
    number = {name: i for i, name in enumerate(classes)}
    train_labels = np.array([number[label] for label in train.labels])
    target_index = number[target]
    weights = fit_linear(train.features, train_labels, len(classes)) if probe == "linear" else None

    def predict(features: np.ndarray) -> np.ndarray:
        if weights is None:
            return knn_predict(train.features, train_labels, features, len(classes), k)
        return linear_apply(weights, features)

    def truth(split: Embedded) -> np.ndarray:
        # a validation class absent from training can never be predicted right: -1 marks it
        return np.array([number.get(label, -1) for label in split.labels])

    clean_pred, clean_true = predict(clean_val.features), truth(clean_val)
    trig_pred, trig_true = predict(triggered.features), truth(triggered)
    clean_others = clean_true != target_index
    trig_others = trig_true != target_index
    if not trig_others.any() or not clean_others.any():
        raise ConfigError("the validation splits hold no image outside the target class", "use a validation split with several classes")
    hits = int(np.sum(trig_pred[trig_others] == target_index))
    return BackdoorEffect(
        probe=probe,
        target=target,
        clean_accuracy=float(np.mean(clean_pred == clean_true)),
        attack_success_rate=hits / int(trig_others.sum()),
        target_false_positives=hits,
        non_target=int(trig_others.sum()),
        clean_to_target_rate=float(np.mean(clean_pred[clean_others] == target_index)),
        triggered_accuracy=float(np.mean(trig_pred == trig_true)),
    )


def embed_split(encoder, specs: Sequence[str], batch_size: int = 256, workers: int = 2) -> Embedded:
    """Embed every labelled image of `specs` with `encoder` (resized to `encoder.config.resolution`).

    Args:
        encoder: callable `(B, 3, R, R) float in [0, 1] -> (B, D)` L2-normalised, with
            `config.resolution` and a `device` (as `ssl_guard.encoders.load_encoder` returns).
    Raises:
        EmptyDatasetError: no labelled image.
    """
    import torch

    from ssl_guard.data import resolve_sources, stream_batches

    sources = resolve_sources(list(specs))
    device = getattr(encoder, "device", torch.device("cpu"))
    features: list[np.ndarray] = []
    labels: list[str] = []
    with torch.no_grad():
        for batch in stream_batches(sources, encoder.config.resolution, batch_size, workers):
            keep = [i for i, label in enumerate(batch.labels) if label is not None]
            if not keep:
                continue
            images = torch.from_numpy(batch.images[keep]).to(device).float().div_(255.0)
            features.append(encoder(images).float().cpu().numpy())
            labels.extend(batch.labels[i] for i in keep)
    if not labels:
        raise EmptyDatasetError(f"no labelled image in {', '.join(specs)}", "the probe needs class labels: a folder per class or a .cls field")
    return Embedded(np.concatenate(features).astype(np.float32), labels)


def measure_backdoor(
    encoder_spec: str,
    train: Sequence[str],
    clean_val: Sequence[str],
    triggered: Sequence[str],
    target: str,
    probe: str = "knn",
    k: int = 20,
    device: str = "auto",
    workers: int = 2,
    batch_size: int = 256,
) -> BackdoorEffect:
    """Load `encoder_spec`, embed the three splits and return the probe's `BackdoorEffect`."""
    from ssl_guard.encoders import load_encoder

    if probe not in ("knn", "linear"):
        raise ConfigError(f"--probe {probe!r} is unknown", "use knn or linear")
    encoder = load_encoder(encoder_spec, device)
    splits = [embed_split(encoder, specs, batch_size, workers) for specs in (train, clean_val, triggered)]
    effect = backdoor_effect(*splits, target=target, probe=probe, k=k)
    effect.settings = {
        "encoder": encoder_spec,
        "revision": getattr(encoder, "revision", None),
        "probe": probe,
        "k": k if probe == "knn" else None,
        "train": list(train),
        "clean_val": list(clean_val),
        "triggered": list(triggered),
        "target": target,
    }
    return effect
