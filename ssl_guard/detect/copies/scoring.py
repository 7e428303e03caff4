"""Step 6: every image scored against the bank, with thresholds from the scan's own null.

A template is matched densely in every image (the normalised squared residual of the best
window). Almost every image is unrelated to a given pattern, so the bulk of the residuals is the
null: its median and spread (MAD) are measured on the scan itself, and an image is a host when its
residual is further below the bulk than any of the N images would be by chance (Bonferroni on a
log-normal fit: z = Φ⁻¹(1 − α/N)). A pasted patch's copies sit far below that line; a natural
look-alike's matches form a continuum that runs into it, which `lookalike_ratio` measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F

from ssl_guard.detect.copies.edits import as_float
# the same dense residual, prevalence guard and targeted readout as `mine`: one copy of each
from ssl_guard.detect.mine import host_concentration, match_residual, prevalence_guard  # noqa: F401


def phases(template: torch.Tensor) -> torch.Tensor:
    """The template and its copies shifted by half a pixel right, down and both (bilinear, one
    pixel cropped): (4, 3, h-1, w-1). A copy pasted at another sub-pixel phase matches one of them
    as closely as an aligned copy matches the template."""
    t = template
    shifts = [t[:, :-1, :-1], (t[:, :-1, :-1] + t[:, :-1, 1:]) / 2, (t[:, :-1, :-1] + t[:, 1:, :-1]) / 2, (t[:, :-1, :-1] + t[:, 1:, 1:] + t[:, :-1, 1:] + t[:, 1:, :-1]) / 4]
    return torch.stack(shifts)


def residuals(images: np.ndarray, rows: np.ndarray, templates: list[torch.Tensor], batch_size: int, device: torch.device, advance: Callable[[int], None] = lambda k: None) -> tuple[np.ndarray, np.ndarray]:
    """Best residual of each template in each image of `rows`: (len(rows), T) float32, and the
    best window's top-left corner (len(rows), T, 2) int32 as (y, x)."""
    out = np.full((len(rows), len(templates)), np.inf, np.float32)
    corner = np.zeros((len(rows), len(templates), 2), np.int32)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        pixels = as_float(images[chunk], device)
        for t, template in enumerate(templates):
            residual = torch.stack([match_residual(pixels, shifted) for shifted in phases(template.to(device))]).amin(0)
            b, h, w = residual.shape
            value, flat = residual.reshape(b, -1).min(dim=1)
            out[start : start + len(chunk), t] = value.cpu().numpy()
            corner[start : start + len(chunk), t, 0] = (flat // w).cpu().numpy()
            corner[start : start + len(chunk), t, 1] = (flat % w).cpu().numpy()
        advance(len(chunk))
    return out, corner


def null_threshold(residual: np.ndarray, alpha: float) -> dict[str, float]:
    """The host threshold of one pattern from its residuals over a scan.

    Returns the threshold, the bulk's median and spread (log residual), and the lookalike ratio:
    the images just above the threshold beyond what the fitted null predicts there, per host. A
    pasted patch leaves that band as empty as the null says; natural look-alikes fill it.
    """
    logs = np.log(np.maximum(residual, 1e-6))
    median = float(np.median(logs))
    spread = float(1.4826 * np.median(np.abs(logs - median))) or 1e-6
    null = NormalDist()
    z = null.inv_cdf(1 - alpha / max(2, len(residual)))
    cut = median - z * spread
    hosts = int((logs < cut).sum())
    # the band just above the threshold (z down to 0.75 z below the bulk): what the null predicts
    # there is next to nothing; images beyond that prediction are look-alikes
    band = int(((logs >= cut) & (logs < median - 0.75 * z * spread)).sum())
    expected = len(residual) * (null.cdf(-0.75 * z) - null.cdf(-z))
    return {"threshold": float(math.exp(cut)), "bulk_median": float(math.exp(median)), "bulk_spread": spread, "z": float(z), "hosts": float(hosts), "lookalike_ratio": max(0.0, band - expected) / max(hosts, 1)}


def match_maps(images: np.ndarray, rows: np.ndarray, templates: list[torch.Tensor], which: np.ndarray, thresholds: np.ndarray, device: torch.device) -> dict[int, np.ndarray]:
    """Where in each image its best pattern matches: row -> (R, R) float16 in [0, 1], 1 where the
    window centred there is an exact copy, 0 at twice the pattern's threshold and beyond."""
    maps: dict[int, np.ndarray] = {}
    for row in rows.tolist():
        t = int(which[row])
        template = templates[t]
        residual = match_residual(as_float(images[row : row + 1], device), template.to(device))[0]
        heat = (1.0 - residual / (2 * float(thresholds[t]))).clamp(0, 1)
        h, w = template.shape[1:]
        full = torch.zeros(images.shape[-2:], device=heat.device)
        full[h // 2 : h // 2 + heat.shape[0], w // 2 : w // 2 + heat.shape[1]] = heat
        maps[int(row)] = full.cpu().numpy().astype(np.float16)
    return maps
