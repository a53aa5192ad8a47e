"""NT-Xent (SimCLR) against the paper's formula written plainly, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from crystaltwins.losses import OBJECTIVES, NTXentLoss, build_objective


def naive_nt_xent(z_a, z_b, tau=0.1):
    """Chen et al. 2020, Algorithm 1: the mean of l(2k-1, 2k) and l(2k, 2k-1) over the pairs."""
    n = z_a.shape[0]
    z = [z_a[k] for k in range(n)] + [z_b[k] for k in range(n)]

    def sim(u, v):
        return float(u @ v) / (float(u.norm()) * float(v.norm()))

    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sim(z[i], z[positive]) / tau) / denominator)
    return total / (2 * n)


def views(n=10, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z_a, z_a + 0.7 * torch.randn(n, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_the_formula(tau):
    z_a, z_b = views()
    assert abs(float(NTXentLoss(tau)(z_a, z_b)) - naive_nt_xent(z_a, z_b, tau)) < 1e-10


def test_invariances():
    z_a, z_b = views()
    loss = NTXentLoss()
    perm = torch.randperm(z_a.shape[0], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss(z_a[perm], z_b[perm]), loss(z_a, z_b))  # rows jointly
    torch.testing.assert_close(loss(z_b, z_a), loss(z_a, z_b))  # both directions counted
    scale = torch.rand(z_a.shape[0], 1, dtype=torch.float64) + 0.1  # only directions count
    torch.testing.assert_close(loss(scale * z_a, z_b), loss(z_a, z_b))
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    torch.testing.assert_close(loss(z_a @ rotation, z_b @ rotation), loss(z_a, z_b))
    # pairing rows with the wrong partner costs more
    assert float(loss(z_a, z_b.roll(1, 0))) > float(loss(z_a, z_b))


def test_gradient_flows_to_both_views():
    z_a, z_b = (z.clone().requires_grad_() for z in views())
    NTXentLoss()(z_a, z_b).backward()
    assert z_a.grad.abs().sum() > 0 and z_b.grad.abs().sum() > 0


def test_defaults_registry_and_errors():
    loss = build_objective("nt-xent")
    assert OBJECTIVES["nt_xent"] is NTXentLoss and loss.temperature == 0.1
    assert not list(loss.parameters())
    with pytest.raises(ValueError, match="positive"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError):
        loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(1, 3), torch.randn(1, 3))
