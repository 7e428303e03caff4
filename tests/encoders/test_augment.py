"""Batched SimCLR augmentations: shapes, ranges, randomness under a seed."""

from __future__ import annotations

import torch

from ssl_guard.encoders.augment import color_jitter, random_gaussian_blur, random_grayscale, random_resized_crop_flip, simclr_view


def pixels(batch: int = 8, side: int = 48) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_views_have_the_training_side_and_stay_in_range():
    views = simclr_view(pixels(), 32, torch.Generator().manual_seed(0))
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.float32
    assert views.min() >= 0 and views.max() <= 1


def test_same_seed_same_views_and_two_draws_differ():
    images = pixels()
    first = simclr_view(images, 32, torch.Generator().manual_seed(0))
    again = simclr_view(images, 32, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    one, two = simclr_view(images, 32, generator), simclr_view(images, 32, generator)
    assert torch.equal(first, again)
    assert not torch.allclose(one, two)


def test_full_crop_without_flip_is_a_resize():
    images = torch.rand(4, 3, 32, 32)
    out = random_resized_crop_flip(images, 32, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = out.flip(-1)
    # each image comes back either unchanged or mirrored
    for index in range(4):
        assert torch.allclose(out[index], images[index], atol=1e-5) or torch.allclose(flipped[index], images[index], atol=1e-5)


def test_grayscale_makes_equal_channels_and_jitter_off_is_identity():
    images = torch.rand(4, 3, 16, 16)
    gray = random_grayscale(images, torch.Generator(), p=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert torch.allclose(color_jitter(images.clone(), torch.Generator(), strength=0.5, p=0.0), images, atol=1e-5)
    assert not torch.allclose(color_jitter(images.clone(), torch.Generator().manual_seed(0), strength=0.5, p=1.0), images)


def test_blur_keeps_shape_and_smooths():
    images = torch.rand(4, 3, 96, 96)
    blurred = random_gaussian_blur(images, torch.Generator().manual_seed(0), p=1.0, sigma=(2.0, 2.0))
    assert blurred.shape == images.shape
    assert blurred.diff(dim=-1).abs().mean() < images.diff(dim=-1).abs().mean() / 2


def test_weaker_crops_keep_more_of_the_image():
    # a bright square in the middle: a crop of at least 90% of the area always keeps some of it
    images = torch.zeros(64, 3, 40, 40)
    images[:, :, 16:24, 16:24] = 1.0
    generator = torch.Generator().manual_seed(0)
    weak = random_resized_crop_flip(images, 32, generator, scale=(0.9, 1.0)).mean(dim=(1, 2, 3))
    strong = random_resized_crop_flip(images, 32, generator, scale=(0.05, 0.1)).mean(dim=(1, 2, 3))
    assert (weak > 0).all()
    assert (strong == 0).float().mean() > 0.3
