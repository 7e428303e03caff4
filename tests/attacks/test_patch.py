"""The patch attack pastes an opaque, resized trigger in the protocol's band and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_guard.attacks import TRAIN_BAND, VAL_BAND, PatchAttack
from ssl_guard.errors import ConfigError
from ssl_guard.synthetic import trigger_patch


def photo(size=(100, 100), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_trigger_is_pasted_opaque_inside_its_box_and_nowhere_else():
    trigger = trigger_patch(seed=3, size=40)
    attack = PatchAttack([("t", trigger)], width=0.2)
    clean = photo()
    result = attack.apply(clean, np.random.default_rng(1), TRAIN_BAND, 0)
    x0, y0, x1, y1 = result.box
    assert (x1 - x0, y1 - y0) == (20, 20)
    before, after = np.asarray(clean), np.asarray(result.image)
    expected = np.asarray(trigger.resize((20, 20), Image.BICUBIC))
    assert np.array_equal(after[y0:y1, x0:x1], expected)
    outside = np.ones(before.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(after[outside], before[outside])
    assert result.trigger == "t"


@pytest.mark.parametrize("band", [TRAIN_BAND, VAL_BAND])
def test_corner_stays_in_the_band_and_the_trigger_inside_the_image(band):
    attack = PatchAttack([("t", trigger_patch(size=16))], width=0.19)
    clean = photo((224, 224))
    boxes = np.array([attack.apply(clean, np.random.default_rng(s), band, 0).box for s in range(300)])
    assert boxes[:, :2].min() >= int(np.ceil(band[0] * 224))
    assert boxes[:, :2].max() <= band[1] * 224
    assert boxes[:, 2:].max() <= 224
    # uniform over the band: both ends of the allowed range are reached in 300 draws
    assert boxes[:, 0].max() - boxes[:, 0].min() > 0.8 * (min(band[1] * 224, 224 - 43) - band[0] * 224)


def test_trigger_scales_with_each_side_of_a_non_square_photo():
    attack = PatchAttack([("t", trigger_patch(size=16))], width=0.25)
    box = attack.apply(photo((200, 100)), np.random.default_rng(0), TRAIN_BAND, 0).box
    assert (box[2] - box[0], box[3] - box[1]) == (50, 25)


def test_several_triggers_rotate_in_equal_shares():
    attack = PatchAttack([("a", trigger_patch(seed=1)), ("b", trigger_patch(seed=2))], width=0.2)
    names = [attack.apply(photo(), np.random.default_rng(i), TRAIN_BAND, i).trigger for i in range(6)]
    assert names == ["a", "b", "a", "b", "a", "b"]


@pytest.mark.parametrize("width", [0.0, -0.1, 1.5])
def test_trigger_width_outside_0_1_is_refused(width):
    with pytest.raises(ConfigError, match="larger than the image"):
        PatchAttack([("t", trigger_patch())], width=width)


def test_trigger_that_cannot_fit_from_the_band_is_refused():
    with pytest.raises(ConfigError, match="does not fit"):
        PatchAttack([("t", trigger_patch())], width=0.8).check_fits(TRAIN_BAND)
