"""SimCLR's augmentations as batched tensor operations (one call per batch, any device).

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations" (ICML 2020),
§3 and Appendix A: random resized crop (area 0.2-1 here, as MoCo v2 and most small-image recipes
use, rather than SimCLR's 0.08), horizontal flip, colour jitter with probability 0.8 (brightness,
contrast, saturation 0.8·s, hue 0.2·s, in random order), grayscale with probability 0.2, and Gaussian
blur with probability 0.5, which the paper drops for 32-px CIFAR images and which is only applied
here at 96 px and above. Per-image PIL transforms cost more CPU than the network at these sizes;
here crop and flip are one `grid_sample`, and the colour operations are per-image affine maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R BT.601 luma, as torchvision's grayscale uses
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
BLUR_MIN_RESOLUTION = 96


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _chance(generator: torch.Generator, n: int, p: float) -> Tensor:
    return torch.rand(n, generator=generator) < p


def random_resized_crop_flip(
    images: Tensor,
    resolution: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Crop a random box of each image (area fraction in `scale`, aspect in `ratio`), flip half.

    Args:
        images: `(B, 3, S, S)` float in [0, 1].
        resolution: side R of the output.
        generator: CPU generator for the random boxes (keeps runs reproducible on any device).
    Returns:
        `(B, 3, R, R)` float in [0, 1], bilinear.
    """
    batch = images.shape[0]
    area = _uniform(generator, batch, *scale)
    log_ratio = _uniform(generator, batch, math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    # box sides as fractions of the image side; a box that would not fit is clipped to the image
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(_chance(generator, batch, 0.5), -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [batch, 3, resolution, resolution], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(images: Tensor) -> Tensor:
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def color_jitter(images: Tensor, generator: torch.Generator, strength: float = 0.5, p: float = 0.8) -> Tensor:
    """SimCLR colour distortion: brightness, contrast, saturation (±0.8·s) and hue (±0.2·s).

    Applied to each image with probability `p`, the four operations in a random order per batch.
    Hue is a rotation of the chroma plane in YIQ space (a linear map, so it batches).

    Args:
        images: `(B, 3, H, W)` float in [0, 1].
    Returns:
        `(B, 3, H, W)` float in [0, 1].
    """
    batch = images.shape[0]
    apply = _chance(generator, batch, p).float()
    amount = 0.8 * strength

    def factor(low: float, high: float) -> Tensor:
        # identity (1.0) for the images that are not jittered
        values = _uniform(generator, batch, low, high) * apply + (1 - apply)
        return values.to(images.device, images.dtype).view(batch, 1, 1, 1)

    brightness = factor(max(0.0, 1 - amount), 1 + amount)
    contrast = factor(max(0.0, 1 - amount), 1 + amount)
    saturation = factor(max(0.0, 1 - amount), 1 + amount)
    hue = (_uniform(generator, batch, -0.2 * strength, 0.2 * strength) * apply) * 2 * math.pi
    order = torch.randperm(4, generator=generator).tolist()

    def rotate_hue(x: Tensor) -> Tensor:
        cos, sin = torch.cos(hue), torch.sin(hue)
        rotation = torch.zeros(batch, 3, 3)
        rotation[:, 0, 0] = 1.0
        rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
        rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
        to_yiq = _RGB_TO_YIQ
        matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (B, 3, 3)
        matrix = matrix.to(x.device, x.dtype)
        return torch.einsum("bij,bjhw->bihw", matrix, x)

    operations = {
        0: lambda x: x * brightness,
        1: lambda x: (x - _gray(x).mean(dim=(2, 3), keepdim=True)) * contrast + _gray(x).mean(dim=(2, 3), keepdim=True),
        2: lambda x: (x - _gray(x)) * saturation + _gray(x),
        3: rotate_hue,
    }
    for index in order:
        images = operations[index](images).clamp_(0.0, 1.0)
    return images


def random_grayscale(images: Tensor, generator: torch.Generator, p: float = 0.2) -> Tensor:
    """Replace each image by its luma (3 equal channels) with probability `p`. `(B, 3, H, W)` in and out."""
    chosen = _chance(generator, images.shape[0], p).to(images.device).view(-1, 1, 1, 1)
    return torch.where(chosen, _gray(images).expand_as(images), images)


def random_gaussian_blur(images: Tensor, generator: torch.Generator, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)) -> Tensor:
    """Blur each image with probability `p`, sigma uniform in `sigma` (in units of a 224-px image,
    scaled to this side), kernel about a tenth of the side, as in SimCLR. `(B, 3, H, W)` in and out."""
    batch, channels, height, width = images.shape
    side = min(height, width)
    radius = max(1, side // 20)
    scale = side / 224.0
    sigmas = _uniform(generator, batch, *sigma) * scale
    sigmas = torch.where(_chance(generator, batch, p), sigmas, torch.zeros_like(sigmas)).clamp(min=1e-3)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / sigmas.view(-1, 1)) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).to(images.device, images.dtype)  # (B, K)
    kernels = kernels.repeat_interleave(channels, dim=0)  # one kernel per (image, channel)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, kernels.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def simclr_view(
    images: Tensor,
    resolution: int,
    generator: torch.Generator,
    jitter_strength: float = 0.5,
    crop_scale: tuple[float, float] = (0.2, 1.0),
) -> Tensor:
    """One augmented view of each image.

    Args:
        images: `(B, 3, S, S)` uint8 or float in [0, 1], decoded slightly larger than `resolution`.
        resolution: side R of the view.
        generator: CPU generator; the same seed gives the same views.
        jitter_strength: s of the colour distortion (SimCLR uses 1.0 on ImageNet, 0.5 on CIFAR).
        crop_scale: (min, max) area fraction of the random crop.
    Returns:
        `(B, 3, R, R)` float in [0, 1].
    """
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    view = random_resized_crop_flip(images, resolution, generator, scale=crop_scale)
    view = color_jitter(view, generator, jitter_strength)
    view = random_grayscale(view, generator)
    if resolution >= BLUR_MIN_RESOLUTION:
        view = random_gaussian_blur(view, generator)
    return view.clamp_(0.0, 1.0)
