"""PatchSearch's localizer (Tejankar et al., CVPR 2023, §3.2): Grad-CAM of the cluster head.

The heat map is the ReLU of the feature map weighted by the spatially averaged gradient of the
image's own cluster logit; the candidate trigger is the fixed-size window with the largest summed
heat. PatchSearch reads the last stage; at 64 px with an ImageNet stem that map is 2×2, so every
window lands in a corner. The map is therefore taken from an earlier stage (stage 3 by default,
4×4 at 64 px; the stage is a parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_guard.detect.cluster import ClusterHead

DEFAULT_STAGE = 3


def stage_module(encoder: nn.Module, stage: int, resolution: int) -> nn.Module:
    """The submodule of `encoder` whose output is `encoder.feature_maps(x, stages=[stage])[0]`.

    Found by running `feature_maps` once with forward hooks on every submodule and matching the
    returned tensor by identity (or, failing that, the last module with an output of its shape), so
    any encoder exposing `feature_maps` works without knowing its layer names.
    """
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: seen.append((mod, out)) if isinstance(out, torch.Tensor) else None)
        for m in encoder.modules()
        if m is not encoder
    ]
    try:
        with torch.no_grad():
            target = encoder.feature_maps(torch.zeros(1, 3, resolution, resolution, device=device), stages=[stage])[0]
    finally:
        for h in hooks:
            h.remove()
    # Containers finish after their last child and return the same tensor: take the outermost.
    for module, out in reversed(seen):
        if out is target:
            return module
    for module, out in reversed(seen):
        if out.shape == target.shape:
            return module
    raise ValueError(f"no submodule of the encoder produces its stage-{stage} feature map")


@dataclass
class GradCamResult:
    """maps: (B, R, R) float32 in [0, 1]; boxes: (B, 4) int64 window of largest summed heat."""

    maps: np.ndarray
    boxes: np.ndarray
    forwards: int


def gradcam_windows(head: ClusterHead, module: nn.Module, x: torch.Tensor, clusters: torch.Tensor, window: int, max_batch: int = 256) -> GradCamResult:
    """Grad-CAM of each image's own cluster logit at `module`'s output, and its best window.

    x: (B, 3, R, R) float in [0, 1]; clusters: (B,) int64; window: side in pixels. The samples of a
    batch are independent (the encoder is in eval mode), so one backward of the summed logits gives
    every image its own gradient.
    """
    b, _, r, _ = x.shape
    maps = []
    for start in range(0, b, max_batch):
        captured: dict[str, torch.Tensor] = {}

        def keep(_mod, _inp, out):
            # Detach and re-enter the graph here: gradients are needed at this stage only, which
            # also makes frozen encoders (requires_grad False) work.
            leaf = out.detach().requires_grad_(True)
            captured["a"] = leaf
            return leaf

        hook = module.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                logits = head(x[start : start + max_batch])
                chosen = logits.gather(1, clusters[start : start + max_batch].view(-1, 1)).sum()
                (grad,) = torch.autograd.grad(chosen, captured["a"])
        finally:
            hook.remove()
        a = captured["a"].detach()
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=(r, r), mode="bilinear", align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        maps.append(torch.where(peak > 0, cam / peak.clamp(min=1e-12), cam))
    heat = torch.cat(maps)
    side = max(1, min(window, r))
    sums = F.avg_pool2d(heat[:, None], side, stride=1)[:, 0]
    positions = sums.flatten(1).argmax(dim=1)
    y0 = positions // sums.shape[-1]
    x0 = positions % sums.shape[-1]
    boxes = torch.stack([x0, y0, x0 + side, y0 + side], dim=1)
    return GradCamResult(heat.cpu().numpy(), boxes.cpu().numpy().astype(np.int64), b)
