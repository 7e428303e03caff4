"""BasicBlock ResNet encoders described entirely by an `EncoderConfig`.

The encoder carries its own input contract (resolution, normalisation) in its config, so nothing
downstream hard-codes them. Parameter names follow torchvision's ResNet (`conv1`, `bn1`,
`layer1.0.conv1`, ...), so a torchvision ResNet-18/34 state dict without its `fc` head loads into a
width-64, ImageNet-stem encoder of the same depth. Architecture: He et al., "Deep Residual Learning
for Image Recognition" (CVPR 2016), BasicBlock variant (§3.3, Table 1); the CIFAR stem is the one
SimCLR uses for 32-px images (Chen et al., ICML 2020, Appendix B.9).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Blocks per stage for each supported depth; resnet10 is PatchSearch's poison classifier backbone.
STAGE_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
STAGES = (0, 1, 2, 3, 4)


class EncoderConfig(pydantic.BaseModel):
    """Everything needed to rebuild an encoder and feed it: stored as the folder's `config.json`.

    `embed_dim` is derived (8 × `width`, the channels of the last stage); it may be given, and must
    then agree. `training` is free-form provenance (data fingerprint and size, epochs, steps,
    minutes, seed) written by `bootstrap`.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    arch: Literal["resnet10", "resnet18", "resnet34"] = "resnet18"
    width: int = pydantic.Field(64, ge=4, le=512)
    stem: Literal["imagenet", "cifar"] = "imagenet"
    embed_dim: int
    resolution: int = pydantic.Field(64, ge=8, le=4096)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    ssl_method: str | None = None
    training: dict[str, Any] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _derive_embed_dim(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("embed_dim") is None:
            values = dict(values)
            width = values.get("width", cls.model_fields["width"].default)
            try:
                values["embed_dim"] = 8 * int(width)
            except (TypeError, ValueError):
                values.pop("embed_dim", None)  # the width error is reported by field validation
        return values

    @pydantic.model_validator(mode="after")
    def _check(self) -> "EncoderConfig":
        if self.embed_dim != 8 * self.width:
            raise ValueError(f"embed_dim {self.embed_dim} does not match width {self.width} (it must be 8 × width = {8 * self.width})")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        # the ImageNet stem and three stride-2 stages shrink the input 32×: below that the last
        # stage has no spatial extent left
        smallest = 32 if self.stem == "imagenet" else 8
        if self.resolution < smallest:
            raise ValueError(f"resolution {self.resolution} is below {smallest}, the smallest input the {self.stem} stem accepts")
        return self


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + shortcut, inplace=True)


class Encoder(nn.Module):
    """A ResNet backbone with global average pooling, fed `[0, 1]` images of `config.resolution`.

    Attributes:
        config: the architecture and input contract.
        spec: how the encoder was obtained ("hub:org/name@sha", a folder path, "random", ...).
        revision: the Hub commit sha when it came from the Hub, else None.
    """

    def __init__(self, config: EncoderConfig, spec: str = "random", revision: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.revision = revision
        width = config.width
        if config.stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        channels = [width, width, 2 * width, 4 * width, 8 * width]
        for index, blocks in enumerate(STAGE_BLOCKS[config.arch], start=1):
            stride = 1 if index == 1 else 2
            layer = [BasicBlock(channels[index - 1], channels[index], stride)]
            layer += [BasicBlock(channels[index], channels[index], 1) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layer))
        self._channels = channels
        stem_stride = 4 if config.stem == "imagenet" else 1
        self._strides = [stem_stride, stem_stride, 2 * stem_stride, 4 * stem_stride, 8 * stem_stride]
        # normalisation constants come from the config, so they are not saved with the weights
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def stage_channels(self, stage: int) -> int:
        """Channels of the feature map at `stage` (0 = stem, 1..4 = layer1..layer4)."""
        return self._channels[_check_stage(stage)]

    def stage_stride(self, stage: int) -> int:
        """Input pixels per feature-map cell at `stage` (e.g. 4, 4, 8, 16, 32 for the ImageNet stem)."""
        return self._strides[_check_stage(stage)]

    def normalize(self, images: Tensor) -> Tensor:
        """`(B, 3, R, R)` float in [0, 1] (or uint8) -> the mean/std-normalised network input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        return (images.to(self.mean.dtype) - self.mean) / self.std

    def feature_maps(self, images: Tensor, stages: Sequence[int]) -> list[Tensor]:
        """Activations at the requested stages, in the order asked.

        Args:
            images: `(B, 3, H, W)` float in [0, 1].
            stages: stage indices, 0 = stem output (after the max-pool for the ImageNet stem),
                1..4 = layer1..layer4.
        Returns:
            one `(B, C_s, H / stride_s, W / stride_s)` tensor per stage: post-ReLU activations,
            not L2-normalised.
        """
        wanted = [_check_stage(s) for s in stages]
        if not wanted:
            return []
        deepest = max(wanted)
        out: dict[int, Tensor] = {}
        x = self.maxpool(F.relu(self.bn1(self.conv1(self.normalize(images))), inplace=True))
        out[0] = x
        for stage in range(1, deepest + 1):
            x = getattr(self, f"layer{stage}")(x)
            out[stage] = x
        return [out[s] for s in wanted]

    def pooled(self, images: Tensor) -> Tensor:
        """`(B, 3, H, W)` float in [0, 1] -> `(B, embed_dim)` average-pooled last stage, not normalised."""
        (last,) = self.feature_maps(images, [4])
        return torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)

    def forward(self, images: Tensor) -> Tensor:
        """`(B, 3, R, R)` float in [0, 1] -> `(B, embed_dim)` float, L2-normalised embeddings."""
        return F.normalize(self.pooled(images), dim=1)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, revision={self.revision!r}"


def _check_stage(stage: int) -> int:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES} (0 = stem, 1..4 = layer1..layer4), got {stage!r}")
    return int(stage)


def build_encoder(config: EncoderConfig, seed: int = 0) -> Encoder:
    """A randomly initialised encoder, identical for the same `config` and `seed`, in eval mode.

    Initialisation follows torchvision's ResNet (Kaiming-normal convolutions, unit BatchNorm). The
    global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder(config, spec="random")
        for module in encoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return encoder.eval()
