"""SimCLR's projection head and NT-Xent loss (Chen et al., ICML 2020, §2.1, Eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """MLP g(·) mapping backbone features to the space where the loss is applied (SimCLR §2.1).

    Linear → BatchNorm → ReLU → Linear; the head is discarded after training (§4.2: the layer before
    it represents better).
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: Tensor) -> Tensor:
        """`(B, in_dim)` -> `(B, out_dim)`."""
        return self.net(features)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised-temperature cross entropy over the 2B views of a batch.

    Each view's positive is the other view of the same image; the other 2B − 2 views are its
    negatives.

    Args:
        z1, z2: `(B, D)` projections of the two views, B ≥ 2.
        temperature: τ > 0.
    Returns:
        scalar mean loss; log(2B − 1) for uninformative projections.
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"nt_xent needs two (B, D) tensors with B >= 2, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(0, batch)]).to(z.device)
    return F.cross_entropy(logits, targets)
