"""The CTRL-style attack adds exactly the chosen chroma DCT coefficients."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_guard.attacks import FrequencyAttack
from ssl_guard.attacks.base import TRAIN_BAND
from ssl_guard.attacks.frequency import dct_matrix, rgb_to_ycbcr, ycbcr_to_rgb
from ssl_guard.errors import ConfigError, GuardError


def test_dct_matrix_is_orthonormal():
    c = dct_matrix(16)
    assert np.allclose(c @ c.T, np.eye(16))


def test_colour_conversion_round_trips():
    rgb = np.random.default_rng(0).uniform(0, 255, (8, 8, 3))
    assert np.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-3)


def test_perturbation_is_the_magnitude_on_the_chosen_coefficients_of_every_full_block():
    attack = FrequencyAttack(magnitude=50, window=8, coefficients=((3, 3), (7, 7)))
    offset = attack.perturbation(20, 16)  # 2x2 full blocks, a 4-pixel partial column
    c = dct_matrix(8)
    for by in range(2):
        for bx in range(2):
            coefficients = c @ offset[by * 8 : by * 8 + 8, bx * 8 : bx * 8 + 8] @ c.T
            expected = np.zeros((8, 8))
            expected[3, 3] = expected[7, 7] = 50
            assert np.allclose(coefficients, expected, atol=1e-9)
    assert np.all(offset[:, 16:] == 0)


def test_attack_moves_chroma_not_luma():
    grey = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    result = FrequencyAttack(magnitude=100, window=16, coefficients=((7, 7), (15, 15))).apply(grey, np.random.default_rng(0), TRAIN_BAND, 0)
    before = rgb_to_ycbcr(np.asarray(grey, np.float64))
    after = rgb_to_ycbcr(np.asarray(result.image, np.float64))
    assert np.abs(after[..., 0] - before[..., 0]).max() < 1.0  # only rounding reaches the luma
    assert np.abs(after[..., 1:] - before[..., 1:]).max() > 5.0
    assert result.box is None


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="outside"):
        FrequencyAttack(window=16, coefficients=((15, 16),))
    with pytest.raises(ConfigError):
        FrequencyAttack(magnitude=0)
    with pytest.raises(GuardError, match="smaller than"):
        FrequencyAttack(window=64).perturbation(32, 32)
