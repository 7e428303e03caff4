"""Per-image features in which a shared additive signal correlates across images and photos do not.

A global trigger adds one fixed signal to every poison: x' = (1 - alpha) x + alpha p for a blend,
x + delta for CTRL. Seen directly in pixels or in a whitened spectrum, that shared signal is small
next to the photos' own content (on the dev split, two poisons blended with stripes at alpha 0.12
correlate at 0.002 in per-bin standardised DCT coefficients, below the 0.06 a photo reaches with
its most similar clean photo). What makes it visible is where photos are quiet: in flat regions
(sky, walls, blur) the trigger is nearly all there is.

So each image is described, per YCbCr channel and per octave of a Gaussian pyramid, by its band-pass
residual divided by the local band energy (a divisive normalisation) and squashed by tanh. Flat
regions then carry the trigger's band-pass shape at full weight, textured regions carry the photo's
own and cancel out between unrelated photos. The division and the band-pass also make the features
blind to the benign global effects of one camera or one pipeline: a colour cast (a constant, removed
by the band-pass), an exposure change (a gain, divided out) and a vignette (a slowly varying gain,
whose curvature leaves one sign over the flat regions: each feature plane's spatial mean is removed).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=32)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix of a 1-D Gaussian blur with replicated edges: row i holds the weights
    that output pixel i takes from each input pixel (the taps that fall off the edge are added to
    the edge pixel, which is what replicate padding does). Built once per size and sigma; read-only."""
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-(t**2) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    matrix = np.zeros((size, size))
    for i in range(size):
        np.add.at(matrix[i], np.clip(i + t, 0, size - 1), kernel)
    matrix.setflags(write=False)
    return matrix


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), edge pixels replicated.

    Each axis is one matrix product with a banded blur matrix: the same sums as a padded
    depthwise convolution, several times faster on a CPU for the wide kernels used here."""
    h, w = x.shape[-2:]
    across = torch.tensor(_blur_matrix(w, float(sigma)), dtype=x.dtype, device=x.device)
    down = across if h == w else torch.tensor(_blur_matrix(h, float(sigma)), dtype=x.dtype, device=x.device)
    return down @ (x @ across.T)


def _ycbcr(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.cat([y, cb, cr], 1)


def feature_dims(resolution: int, levels: int) -> int:
    """Length of one image's feature vector at `resolution` with `levels` octaves."""
    dims, side = 0, resolution
    for _ in range(levels):
        dims += 3 * side * side
        side //= 2
        if side < 4:
            break
    return dims


def views(resolution: int, levels: int) -> list[tuple[str, slice]]:
    """Named column ranges of the feature vector searched on their own, then the whole vector.

    A trigger's energy sits in some octaves and channels: a slow sinusoid in the coarse octaves of
    the luminance, CTRL in the fine chroma. In the whole vector the finest octave has three quarters
    of the columns and drowns a coarse signal (dev split: SIG at 3 cycles, alpha 0.17, has 0.15 of
    its 5 nearest images poisoned in the whole vector, 0.67 in the luminance of the third octave).
    """
    out, at, side = [], 0, resolution
    for level in range(levels):
        plane = side * side
        out.append((f"octave{level}-luma", slice(at, at + plane)))
        out.append((f"octave{level}-chroma", slice(at + plane, at + 3 * plane)))
        at += 3 * plane
        side //= 2
        if side < 4:
            break
    out.append(("all", slice(0, at)))
    return out


def normalized_residuals(images: np.ndarray | torch.Tensor, levels: int = 4, eps: float = 0.25, device: torch.device | str = "cpu", gain_sigma: float = 8.0) -> torch.Tensor:
    """(B, 3, R, R) uint8 -> (B, D) float32 features (see the module docstring).

    `eps` (grey levels) keeps the division finite where an image is perfectly flat; it is set near
    the noise of uint8 rounding (std 0.29), so that any signal above the rounding is kept.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).to(device).float()
    # a smooth gain (a vignette, an exposure ramp) multiplies the image; dividing by the image's
    # own heavily blurred copy takes it out before anything else, while an added signal finer than
    # about two cycles per image stays (`gain_sigma` is in pixels of a 64 px image)
    sigma = gain_sigma * x.shape[-1] / 64.0
    x = 128.0 * x / (_blur(x, sigma) + 4.0)
    current = _ycbcr(x)
    parts = []
    for _ in range(levels):
        low = _blur(current, 1.0)
        band = current - low
        energy = _blur(band * band, 2.0).sqrt()
        plane = torch.tanh(2.0 * band / (energy + eps))
        # a smooth gain (a vignette) leaves a band response of one sign over every flat region;
        # each plane's own spatial mean removes it, while a trigger's band-pass shape has none
        parts.append((plane - plane.mean(dim=(2, 3), keepdim=True)).flatten(1))
        current = F.avg_pool2d(low, 2)
        if current.shape[-1] < 4:
            break
    return torch.cat(parts, 1)
