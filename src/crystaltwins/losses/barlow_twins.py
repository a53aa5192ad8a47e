"""Barlow Twins objective (Zbontar et al. 2021), as used by Crystal Twins."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward sums every rank's gradient of each part and returns this
    rank's part (each rank's loss depends on every rank's rows)."""

    @staticmethod
    def forward(ctx, z: Tensor) -> tuple[Tensor, ...]:
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked)  # a reduce-scatter, in the collective every backend has
        return stacked[dist.get_rank()]


def gather_from_all_ranks(z: Tensor) -> Tensor:
    """Concatenate ``z`` from every rank, in rank order, keeping autograd.

    The backward sums the gradients of every rank's copy, so each rank receives the full
    gradient of its own rows. Ranks may hold different numbers of rows: the rows are padded to
    the largest count for the collective and trimmed after.

    :param z: ``(n_local, D)`` on this rank.
    :returns: ``(n_global, D)``.
    """
    world = dist.get_world_size()
    local_n = torch.tensor([z.shape[0]], device=z.device, dtype=torch.long)
    sizes = [torch.zeros_like(local_n) for _ in range(world)]
    dist.all_gather(sizes, local_n)
    counts = [int(s.item()) for s in sizes]
    max_n = max(counts)
    if z.shape[0] < max_n:
        z = F.pad(z, (0, 0, 0, max_n - z.shape[0]))
    parts = _AllGather.apply(z)
    if all(c == max_n for c in counts):
        return torch.cat(parts, dim=0)
    return torch.cat([part[:c] for part, c in zip(parts, counts, strict=True)], dim=0)


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardise every column over the batch, ``(z - mean) / sqrt(var + eps)``.

    ``var`` is the *biased* variance (divide by N), which is what the Crystal Twins code's
    ``BatchNorm1d(affine=False)`` in training mode computes.

    :param z: ``(N, D)``.
    :returns: ``(N, D)``.
    """
    var, mean = torch.var_mean(z, dim=0, correction=0)
    return (z - mean) * torch.rsqrt(var + eps)


def gathered_views(z_a: Tensor, z_b: Tensor, gather: bool, too_few: str) -> tuple[Tensor, Tensor]:
    """Two views' projections ``(n_local, D)`` checked and, when ``gather`` and several ranks
    run, concatenated from every rank (:func:`gather_from_all_ranks`).

    :param too_few: the error when fewer than 2 rows remain.
    :raises ValueError: views of another shape than ``(N, D)`` each, or fewer than 2 rows.
    """
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"expected two (N, D) views of equal shape, got {tuple(z_a.shape)} and "
            f"{tuple(z_b.shape)}"
        )
    if gather and _distributed_world_size() > 1:
        z_a = gather_from_all_ranks(z_a)
        z_b = gather_from_all_ranks(z_b)
    if z_a.shape[0] < 2:
        raise ValueError(too_few)
    return z_a, z_b


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
    :func:`torch.distributed.nn.functional.all_gather`, so that means, standard deviations and
    C use the global batch. Every rank then computes the same global loss; the gradient that
    reaches each rank's parameters is ``world_size`` times its share, so the gradient
    *averaging* of DDP yields exactly the gradient of the single-process loss on the joint
    batch. Statistics always come from the current batch (train and eval alike).

    :param lambda_: weight :math:`\lambda` of the off-diagonal (redundancy) term.
    :param gather_distributed: gather the views across ranks when running distributed.
    :param eps: added to the variance before the square root.
    """

    def __init__(
        self, lambda_: float = 0.0051, gather_distributed: bool = True, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)
        self.gather_distributed = bool(gather_distributed)
        self.eps = float(eps)

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
        c = self.cross_correlation(z_a, z_b)
        diag = torch.diagonal(c)
        on_diag = (1.0 - diag).square().sum()
        off_diag = c.square().sum() - diag.square().sum()
        return on_diag + self.lambda_ * off_diag

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}, gather_distributed={self.gather_distributed}"
