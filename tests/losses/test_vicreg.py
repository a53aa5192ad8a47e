"""VICReg against the paper's formula written plainly, in float64."""

from __future__ import annotations

import pytest
import torch

from crystaltwins.losses import OBJECTIVES, VICRegLoss, build_objective


def naive_vicreg(z_a, z_b, lam=25.0, mu=25.0, nu=1.0, gamma=1.0, eps=1e-4):
    """Bardes et al. 2022, eqs. 1-6, one entry at a time."""
    n, d = z_a.shape
    invariance = sum((z_a[i, k] - z_b[i, k]) ** 2 for i in range(n) for k in range(d)) / (n * d)
    variance = 0.0
    covariance = 0.0
    for z in (z_a, z_b):
        mean = [sum(z[i, k] for i in range(n)) / n for k in range(d)]
        for k in range(d):
            var = sum((z[i, k] - mean[k]) ** 2 for i in range(n)) / (n - 1)
            variance = variance + 0.5 * torch.clamp(gamma - torch.sqrt(var + eps), min=0.0) / d
        for k in range(d):
            for m in range(d):
                if k != m:
                    c = sum((z[i, k] - mean[k]) * (z[i, m] - mean[m]) for i in range(n)) / (n - 1)
                    covariance = covariance + c**2 / d
    return lam * invariance + mu * variance + nu * covariance


def views(n=12, d=5, seed=0, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    z_a = scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z_a, z_a + 0.3 * torch.randn(n, d, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("scale", [0.5, 2.0])  # variance term active / hinge off
def test_matches_the_formula(scale):
    z_a, z_b = views(scale=scale)
    torch.testing.assert_close(VICRegLoss()(z_a, z_b), naive_vicreg(z_a, z_b))
    weights = dict(invariance_weight=1.0, variance_weight=3.0, covariance_weight=0.5)
    torch.testing.assert_close(
        VICRegLoss(**weights)(z_a, z_b), naive_vicreg(z_a, z_b, 1.0, 3.0, 0.5)
    )


def test_gradient_matches_the_formula():
    z_a, z_b = views()
    z1, z2 = z_a.clone().requires_grad_(), z_a.clone().requires_grad_()
    VICRegLoss()(z1, z_b).backward()
    naive_vicreg(z2, z_b).backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_invariances():
    z_a, z_b = views()
    loss = VICRegLoss()
    perm = torch.randperm(z_a.shape[0], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss(z_a[perm], z_b[perm]), loss(z_a, z_b))  # rows jointly
    torch.testing.assert_close(loss(z_b, z_a), loss(z_a, z_b))  # the views swapped
    dims = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(loss(z_a[:, dims], z_b[:, dims]), loss(z_a, z_b))
    shift = torch.randn(1, 5, dtype=torch.float64)  # the same shift of both views changes nothing
    torch.testing.assert_close(loss(z_a + shift, z_b + shift), loss(z_a, z_b))


def test_terms_vanish_where_they_should():
    z_a, _ = views(scale=3.0)
    invariance, _, _ = VICRegLoss().terms(z_a, z_a)
    assert float(invariance) == 0.0
    # decorrelated columns (Hadamard, the constant column left out) of std > 1: no variance and
    # no covariance penalty
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = 2.0 * h[:, 1:]
    assert float(VICRegLoss()(z, z)) < 1e-24


def test_defaults_registry_and_errors():
    loss = build_objective("VICReg")
    assert OBJECTIVES["vicreg"] is VICRegLoss and isinstance(loss, VICRegLoss)
    assert (loss.invariance_weight, loss.variance_weight, loss.covariance_weight) == (25, 25, 1)
    assert not list(loss.parameters())
    with pytest.raises(ValueError):
        loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(1, 3), torch.randn(1, 3))
