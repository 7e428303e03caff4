"""Encoder architecture and its config: the contract the detectors code against."""

from __future__ import annotations

import pydantic
import pytest
import torch

from ssl_guard.encoders import Encoder, EncoderConfig, build_encoder


def test_embed_dim_is_derived_from_width_and_checked():
    assert EncoderConfig(width=16).embed_dim == 128
    assert EncoderConfig().embed_dim == 512  # the standard ResNet-18
    assert EncoderConfig(width=32, embed_dim=256).embed_dim == 256
    with pytest.raises(pydantic.ValidationError, match="8 × width"):
        EncoderConfig(width=32, embed_dim=512)


@pytest.mark.parametrize(
    "values",
    [{"arch": "resnet50"}, {"stem": "vit"}, {"width": 0}, {"resolution": 16}, {"std": (0.2, 0.0, 0.2)}, {"colour": 1}],
)
def test_invalid_configs_are_refused(values):
    with pytest.raises(pydantic.ValidationError):
        EncoderConfig(**values)


def test_forward_gives_unit_length_embeddings_of_embed_dim():
    encoder = build_encoder(EncoderConfig(width=8, resolution=32))
    embeddings = encoder(torch.rand(3, 3, 32, 32))
    assert embeddings.shape == (3, 64)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_forward_normalises_with_the_configs_mean_and_std():
    plain = build_encoder(EncoderConfig(width=8, resolution=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    images = torch.rand(2, 3, 32, 32)
    # the same weights fed pre-normalised pixels with an identity normalisation give the same output
    identity = Encoder(EncoderConfig(width=8, resolution=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))).eval()
    identity.load_state_dict(plain.state_dict())
    assert torch.allclose(plain(images), identity((images - 0.5) / 0.5), atol=1e-5)


def test_uint8_images_are_read_as_0_255():
    encoder = build_encoder(EncoderConfig(width=8, resolution=32))
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(encoder(pixels), encoder(pixels.float() / 255), atol=1e-6)


@pytest.mark.parametrize("stem,strides", [("imagenet", (4, 4, 8, 16, 32)), ("cifar", (1, 1, 2, 4, 8))])
@pytest.mark.parametrize("arch", ["resnet10", "resnet18"])
def test_feature_maps_match_stage_channels_and_strides(stem, strides, arch):
    encoder = build_encoder(EncoderConfig(arch=arch, width=8, stem=stem, resolution=64))
    maps = encoder.feature_maps(torch.rand(2, 3, 64, 64), [4, 0, 2])
    for stage, tensor in zip([4, 0, 2], maps):
        assert encoder.stage_stride(stage) == strides[stage]
        assert tensor.shape == (2, encoder.stage_channels(stage), 64 // strides[stage], 64 // strides[stage])
    assert [encoder.stage_channels(s) for s in range(5)] == [8, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="stage"):
        encoder.feature_maps(torch.rand(1, 3, 64, 64), [5])


def test_build_encoder_is_seeded_and_leaves_the_global_rng_alone():
    config = EncoderConfig(width=8, resolution=32)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_encoder(config, seed=1)
    assert torch.equal(torch.rand(1), before)
    second = build_encoder(config, seed=1)
    third = build_encoder(config, seed=2)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(first(images), second(images))
    assert not torch.allclose(first(images), third(images))
    assert not first.training  # ready for inference


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_torchvision_resnet_weights_fit_a_width_64_encoder(arch):
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        reference = getattr(torchvision.models, arch)()
        encoder = Encoder(EncoderConfig(arch=arch, width=64, stem="imagenet"))
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in encoder.state_dict().items()} == expected
