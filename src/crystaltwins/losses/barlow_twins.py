"""Barlow Twins objective (Zbontar et al. 2021), as used by Crystal Twins."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.losses.distributed import gathered_views


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardise every column over the batch, ``(z - mean) / sqrt(var + eps)``.

    ``var`` is the *biased* variance (divide by N), which is what the Crystal Twins code's
    ``BatchNorm1d(affine=False)`` in training mode computes.

    :param z: ``(N, D)``.
    :returns: ``(N, D)``.
    """
    var, mean = torch.var_mean(z, dim=0, correction=0)
    return (z - mean) * torch.rsqrt(var + eps)


class BarlowTwinsLoss(nn.Module):
    r"""Barlow Twins redundancy-reduction loss.

    .. math::

        C = \tfrac{1}{N} \hat z_a^\top \hat z_b, \qquad
        \mathcal{L} = \sum_i (1 - C_{ii})^2 + \lambda \sum_{i \ne j} C_{ij}^2

    where :math:`\hat z` is :math:`z` standardised per dimension over the batch with the
    *biased* standard deviation and ``eps`` inside the square root (exactly
    ``BatchNorm1d(D, affine=False)`` in training mode, as in the Crystal Twins code), and N the
    *global* batch size.

    Under ``torch.distributed`` (initialised, world size > 1) and ``gather_distributed=True``
    both views are gathered from all ranks with the autograd-aware
    :func:`~crystaltwins.losses.distributed.gather_from_all_ranks`, so that means, standard deviations and
    C use the global batch. Every rank then computes the same global loss; the gradient that
    reaches each rank's parameters is ``world_size`` times its share, so the gradient
    *averaging* of DDP yields exactly the gradient of the single-process loss on the joint
    batch. Statistics always come from the current batch (train and eval alike).

    With ``l2_normalize`` (the default) each projection is first scaled to unit length, as the
    Crystal Twins code does before its Barlow Twins loss (``contrast.py``: ``F.normalize(z,
    dim=1)`` on both views); the original Barlow Twins does not (``l2_normalize=False``).

    :param lambda_: weight :math:`\lambda` of the off-diagonal (redundancy) term.
    :param gather_distributed: gather the views across ranks when running distributed.
    :param eps: added to the variance before the square root.
    :param l2_normalize: scale every projection to unit length first (Crystal Twins).
    """

    def __init__(
        self,
        lambda_: float = 0.0051,
        gather_distributed: bool = True,
        eps: float = 1e-5,
        l2_normalize: bool = True,
    ) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)
        self.gather_distributed = bool(gather_distributed)
        self.eps = float(eps)
        self.l2_normalize = bool(l2_normalize)

    def cross_correlation(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """The ``(D, D)`` matrix C of the (already gathered) views ``(N, D)``."""
        n = z_a.shape[0]
        return standardize(z_a, self.eps).t() @ standardize(z_b, self.eps) / n

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
            "Barlow Twins needs at least 2 samples to standardise over the batch",
        )
        if self.l2_normalize:
            z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        c = self.cross_correlation(z_a, z_b)
        diag = torch.diagonal(c)
        on_diag = (1.0 - diag).square().sum()
        off_diag = c.square().sum() - diag.square().sum()
        return on_diag + self.lambda_ * off_diag

    def extra_repr(self) -> str:
        return (
            f"lambda_={self.lambda_}, gather_distributed={self.gather_distributed}, "
            f"l2_normalize={self.l2_normalize}"
        )
