"""Score stage (stage 5, docs/architecture.md): the flip test of PatchSearch (CVPR 2023, §3.3).

A candidate window cut from an image of cluster c is pasted at an independent random spot onto
each reference image (the images nearest the centroids); the share of references from other
clusters that then land in c is the candidate's flip rate. A trigger the encoder has learned drags
many; an ordinary object part drags few. All pastes are tensor ops, batched over candidates and
references together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ssl_guard.detect.cluster import ClusterHead


def pad_patches(patches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (3, h_i, w_i) patches into (P, 3, H, W) zero-padded, plus their (P, 2) sizes (h, w)."""
    h = max(p.shape[1] for p in patches)
    w = max(p.shape[2] for p in patches)
    out = patches[0].new_zeros(len(patches), 3, h, w)
    for i, p in enumerate(patches):
        out[i, :, : p.shape[1], : p.shape[2]] = p
    sizes = torch.tensor([[p.shape[1], p.shape[2]] for p in patches], device=out.device)
    return out, sizes


def random_corners(sizes: torch.Tensor, resolution: int, generator: torch.Generator, margin: int = 0) -> torch.Tensor:
    """(B, 2) top-left corners (y, x), uniform over the spots where a (h, w) patch fits whole.

    sizes: (B, 2) int64 on any device; `margin` pixels are kept free at every border when they fit.
    """
    room = (resolution - sizes.cpu()).clamp(min=0)
    m = torch.minimum(torch.full_like(room, margin), room // 2)
    u = torch.rand(sizes.shape, generator=generator)
    corners = m + (u * (room - 2 * m + 1).float()).long().clamp(max=(room - 2 * m).clamp(min=0))
    return corners.to(sizes.device)


def paste_patches(images: torch.Tensor, patches: torch.Tensor, sizes: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Paste patch b (its top-left (sizes[b]) part) opaquely into image b at corners[b].

    images: (B, 3, R, R); patches: (B, 3, H, W) padded; sizes, corners: (B, 2) int64 (h, w), (y, x).
    Returns a new (B, 3, R, R) tensor; the inputs are left untouched.
    """
    b, _, r, _ = images.shape
    grid = torch.arange(r, device=images.device)
    rows = grid[None, :] - corners[:, 0:1]  # (B, R) row inside the patch, or out of range
    cols = grid[None, :] - corners[:, 1:2]
    inside = ((rows >= 0) & (rows < sizes[:, 0:1]))[:, :, None] & ((cols >= 0) & (cols < sizes[:, 1:2]))[:, None, :]
    rows = rows.clamp(0, patches.shape[2] - 1)
    cols = cols.clamp(0, patches.shape[3] - 1)
    batch = torch.arange(b, device=images.device)[:, None, None]
    canvas = patches.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return torch.where(inside[:, None], canvas, images)


@dataclass
class FlipResult:
    """rates: (C,) share of eligible references that moved into the candidate's cluster;
    moved: (C,) their count; eligible: (C,) references not already in that cluster."""

    rates: np.ndarray
    moved: np.ndarray
    eligible: np.ndarray
    forwards: int


@torch.no_grad()
def flip_test(
    head: ClusterHead,
    patches: list[torch.Tensor],
    clusters: np.ndarray,
    references: torch.Tensor,
    reference_clusters: np.ndarray,
    generator: torch.Generator,
    max_batch: int = 512,
) -> FlipResult:
    """Flip rate of each candidate patch.

    patches: C tensors (3, h, w) float in [0, 1]; clusters: (C,) each candidate's cluster;
    references: (M, 3, R, R) float in [0, 1] on the head's device; reference_clusters: (M,) their
    references may also be (M, 3, R, R) uint8 (converted chunk by chunk, so 1,000 references at
    224 px hold 150 MB, not 600 MB); reference_clusters: (M,) their
    clusters as assigned by the same head. Every (candidate, reference) pair is one pasted image.
    """
    c, m = len(patches), len(references)
    if c == 0 or m == 0:
        empty = np.zeros(c)
        return FlipResult(empty.astype(np.float32), empty.astype(np.int64), empty.astype(np.int64), 0)
    padded, sizes = pad_patches(patches)
    target = torch.as_tensor(np.asarray(clusters), device=references.device)
    ref_clusters = torch.as_tensor(np.asarray(reference_clusters), device=references.device)
    pair_candidate = torch.arange(c, device=references.device).repeat_interleave(m)
    pair_reference = torch.arange(m, device=references.device).repeat(c)
    corners = random_corners(sizes[pair_candidate], references.shape[-1], generator)
    landed = torch.empty(c * m, dtype=torch.long, device=references.device)
    for start in range(0, c * m, max_batch):
        sl = slice(start, start + max_batch)
        pc, pr = pair_candidate[sl], pair_reference[sl]
        refs = references[pr]
        if refs.dtype == torch.uint8:
            refs = refs.float() / 255
        pasted = paste_patches(refs, padded[pc], sizes[pc], corners[sl])
        landed[sl] = head.assign(pasted)
    landed = landed.view(c, m)
    eligible = ref_clusters[None, :] != target[:, None]
    moved = ((landed == target[:, None]) & eligible).sum(dim=1)
    n_eligible = eligible.sum(dim=1)
    rates = moved.float() / n_eligible.clamp(min=1).float()
    return FlipResult(rates.cpu().numpy(), moved.cpu().numpy(), n_eligible.cpu().numpy(), c * m)
