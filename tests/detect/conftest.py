"""Fixtures for the cluster-activation detectors: small poisoned sets whose answer is known.

`TriggerAwareEncoder` stands in for an encoder that has learned a backdoor (a long SSL run on the
poisoned data): a matched filter for the planted trigger dominates its embedding, so poisoned
images cluster together, masking the trigger throws them out of their cluster and pasting it drags
clean images in. That is exactly the property PoisonCAM and PatchSearch rely on, made exact so the
tests can check the pipeline's plumbing (localization, flip test, classifier, decision) against
ground truth in seconds. A random-init project encoder covers the "no backdoor" case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_guard import synthetic

RESOLUTION = 48
TRIGGER_PX = 8


class _MatchStage(nn.Module):
    """(B, 3, R, R) -> (B, 4, R/4, R/4): local mean colour (3 channels) and the max normalised
    cross-correlation with the trigger template in each cell (1 channel)."""

    def __init__(self, template: torch.Tensor) -> None:
        super().__init__()
        t = template - template.mean()
        self.register_buffer("template", (t / t.norm())[None])
        self.register_buffer("ones", torch.ones_like(template)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x.shape[-1]
        n = self.template.numel()
        dot = F.conv2d(x, self.template)
        s1 = F.conv2d(x, self.ones)
        s2 = F.conv2d(x * x, self.ones)
        ncc = dot / (s2 - s1 * s1 / n).clamp(min=1e-4).sqrt()
        cells = r // 4
        match = F.adaptive_max_pool2d(ncc, cells)
        colour = F.adaptive_avg_pool2d(x, cells)
        return torch.cat([colour, match], dim=1)


class TriggerAwareEncoder(nn.Module):
    """(B, 3, R, R) in [0, 1] -> (B, 16) L2-normalised: 12 colour features and a trigger detector
    whose response outweighs them when the trigger is present."""

    def __init__(self, template: torch.Tensor, resolution: int = RESOLUTION) -> None:
        super().__init__()
        self.layer3 = _MatchStage(template)
        self.resolution = resolution
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the module a device and a parameter

    def feature_maps(self, x: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
        return [self.layer3(x) for _ in stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.layer3(x)
        colour = F.adaptive_avg_pool2d(f[:, :3], 2).flatten(1) - 0.5
        strength = F.relu((f[:, 3].amax(dim=(1, 2)) - 0.8) / 0.2) * 4
        z = torch.cat([colour, strength[:, None].expand(-1, 4)], dim=1) + self.dummy
        return F.normalize(z, dim=1)


@dataclass
class PoisonedSet:
    images: np.ndarray  # (N, 3, R, R) uint8, read-only
    poisoned: np.ndarray  # (N,) bool
    boxes: np.ndarray  # (N, 4) trigger box of poisoned rows, -1 elsewhere
    trigger: np.ndarray  # (3, t, t) uint8


def make_trigger(px: int = TRIGGER_PX) -> np.ndarray:
    return np.asarray(synthetic.trigger_patch(seed=7, size=px)).transpose(2, 0, 1).copy()


def make_set(n_clean: int = 96, n_poison: int = 12, classes: int = 4, resolution: int = RESOLUTION, seed: int = 0) -> PoisonedSet:
    """Synthetic scenes; `n_poison` of class-0 scenes get the trigger pasted at a random spot in the
    central band (0.1-0.9 of the side), as the SSL backdoor attack does."""
    rng = np.random.default_rng(seed)
    trigger = make_trigger()
    t = trigger.shape[-1]
    images, poisoned, boxes = [], [], []
    per_class = (n_clean + n_poison) // classes + 1
    labels = [c for c in range(classes) for _ in range(per_class)]
    class0 = [i for i, c in enumerate(labels) if c == 0]
    chosen = set(rng.choice(class0, size=n_poison, replace=False).tolist()) if n_poison else set()
    for i, c in enumerate(labels[: n_clean + n_poison]):
        img = np.asarray(synthetic.scene(rng, c, resolution)).transpose(2, 0, 1).copy()
        box = (-1, -1, -1, -1)
        if i in chosen:
            lo, hi = int(0.1 * resolution), int(0.9 * resolution) - t
            x0, y0 = (int(v) for v in rng.integers(lo, hi + 1, 2))
            img[:, y0 : y0 + t, x0 : x0 + t] = trigger
            box = (x0, y0, x0 + t, y0 + t)
        images.append(img)
        poisoned.append(i in chosen)
        boxes.append(box)
    arr = np.stack(images)
    arr.setflags(write=False)
    return PoisonedSet(arr, np.array(poisoned), np.array(boxes), trigger)


def embed(encoder: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = encoder(torch.from_numpy(np.array(images)).float() / 255)
    return z.numpy().astype(np.float16)


@pytest.fixture(scope="session")
def poisoned_set() -> PoisonedSet:
    return make_set()


@pytest.fixture(scope="session")
def trigger_encoder() -> TriggerAwareEncoder:
    return TriggerAwareEncoder(torch.from_numpy(make_trigger()).float() / 255).eval()


@pytest.fixture(scope="session")
def random_encoder():
    """A random-init project encoder (knows no trigger), small enough for tests."""
    from ssl_guard.encoders import EncoderConfig, build_encoder

    return build_encoder(EncoderConfig(arch="resnet10", width=16, resolution=RESOLUTION))
