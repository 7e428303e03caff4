"""NT-Xent loss and projection head."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_guard.encoders.simclr import ProjectionHead, nt_xent


def test_uninformative_projections_give_log_2b_minus_1():
    z = torch.ones(8, 4)
    assert nt_xent(z, z, temperature=0.5).item() == pytest.approx(math.log(15), rel=1e-5)


def test_matching_views_score_lower_than_shuffled_ones():
    z = torch.nn.functional.normalize(torch.randn(16, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    noisy = z + 0.05 * torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    assert nt_xent(z, noisy, 0.2) < 1.0 < 3.0 < nt_xent(z, noisy.roll(1, dims=0), 0.2)


@pytest.mark.parametrize("shapes,temperature", [(((1, 4), (1, 4)), 0.2), (((4, 4), (3, 4)), 0.2), (((4, 4), (4, 4)), 0.0)])
def test_invalid_inputs_raise(shapes, temperature):
    with pytest.raises(ValueError):
        nt_xent(torch.randn(*shapes[0]), torch.randn(*shapes[1]), temperature)


def test_projection_head_shape():
    assert ProjectionHead(64, out_dim=16)(torch.randn(5, 64)).shape == (5, 16)
