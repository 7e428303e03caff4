"""The blend attack mixes a full-image pattern at alpha."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_guard.attacks import BlendAttack, generated_pattern
from ssl_guard.attacks.base import TRAIN_BAND
from ssl_guard.errors import ConfigError


def test_blend_is_the_alpha_mix_of_photo_and_pattern():
    rng = np.random.default_rng(0)
    clean = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    pattern = generated_pattern(seed=1)
    result = BlendAttack(pattern, alpha=0.1).apply(clean, rng, TRAIN_BAND, 0)
    resized = np.asarray(pattern.resize((64, 48), Image.BILINEAR), np.float32)
    expected = np.clip(np.rint(0.9 * np.asarray(clean, np.float32) + 0.1 * resized), 0, 255)
    assert np.array_equal(np.asarray(result.image), expected.astype(np.uint8))
    assert result.box is None
    # a full-image trigger touches most pixels, not a patch
    assert np.mean(np.any(np.asarray(result.image) != np.asarray(clean), axis=2)) > 0.8


def test_generated_pattern_is_fixed_by_its_seed():
    assert np.array_equal(np.asarray(generated_pattern(3)), np.asarray(generated_pattern(3)))
    assert not np.array_equal(np.asarray(generated_pattern(3)), np.asarray(generated_pattern(4)))


@pytest.mark.parametrize("alpha", [0.0, 1.2])
def test_alpha_outside_0_1_is_refused(alpha):
    with pytest.raises(ConfigError):
        BlendAttack(generated_pattern(0), alpha=alpha)
