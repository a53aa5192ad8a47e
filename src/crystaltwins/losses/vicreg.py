"""VICReg objective (Bardes, Ponce & LeCun 2022): variance, invariance, covariance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.losses.distributed import gathered_views


def _off_diagonal_square_sum(c: Tensor) -> Tensor:
    """Sum of the squared off-diagonal entries of a square matrix."""
    return c.square().sum() - torch.diagonal(c).square().sum()


class VICRegLoss(nn.Module):
    r"""Variance-Invariance-Covariance regularisation, as in the authors' code.

    .. math::

        \mathcal{L} = \lambda\,\tfrac{1}{ND}\lVert z_a - z_b\rVert_F^2
        + \mu\,\tfrac12\big[v(z_a) + v(z_b)\big] + \nu\,\big[c(z_a) + c(z_b)\big]

    with :math:`v(z) = \tfrac1D \sum_k \max(0, \gamma - \sqrt{\mathrm{Var}(z_{\cdot k}) + \epsilon})`
    (unbiased variance over the batch) and :math:`c(z) = \tfrac1D \sum_{k \ne l} C_{kl}^2`,
    :math:`C = \tfrac{1}{N-1} (z - \bar z)^\top (z - \bar z)`. Defaults are the paper's
    (:math:`\lambda = \mu = 25`, :math:`\nu = 1`, :math:`\gamma = 1`, :math:`\epsilon = 10^{-4}`).

    Parameter-free. Under ``torch.distributed`` (world size > 1) with ``gather_distributed``
    both views are gathered from every rank first (as :class:`BarlowTwinsLoss`), so every term
    uses the global batch and DDP's gradient averaging gives the single-process gradient.

    :param invariance_weight: :math:`\lambda`.
    :param variance_weight: :math:`\mu`.
    :param covariance_weight: :math:`\nu`.
    :param target_std: :math:`\gamma`, the standard deviation each dimension is pushed up to.
    :param eps: :math:`\epsilon`, added to the variance inside the square root.
    :param gather_distributed: gather the views across ranks when running distributed.
    """

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        target_std: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.invariance_weight = float(invariance_weight)
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        self.target_std = float(target_std)
        self.eps = float(eps)
        self.gather_distributed = bool(gather_distributed)

    def terms(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The unweighted invariance, variance and covariance terms of (gathered) views."""
        n, d = z_a.shape
        invariance = F.mse_loss(z_a, z_b)
        variance = z_a.new_zeros(())
        covariance = z_a.new_zeros(())
        for z in (z_a, z_b):
            centred = z - z.mean(dim=0)
            std = torch.sqrt(centred.square().sum(dim=0) / (n - 1) + self.eps)
            variance = variance + 0.5 * F.relu(self.target_std - std).mean()
            covariance = covariance + _off_diagonal_square_sum(centred.t() @ centred / (n - 1)) / d
        return invariance, variance, covariance

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Loss of two views.

        :param z_a: ``(n_local, D)`` projections of the first view.
        :param z_b: ``(n_local, D)`` projections of the second view, same crystals, same order.
        :returns: scalar loss.
        """
        z_a, z_b = gathered_views(
            z_a,
            z_b,
            self.gather_distributed,
            "VICReg needs at least 2 samples for the batch variance",
        )
        invariance, variance, covariance = self.terms(z_a, z_b)
        return (
            self.invariance_weight * invariance
            + self.variance_weight * variance
            + self.covariance_weight * covariance
        )

    def extra_repr(self) -> str:
        return (
            f"invariance_weight={self.invariance_weight}, variance_weight={self.variance_weight}, "
            f"covariance_weight={self.covariance_weight}"
        )
