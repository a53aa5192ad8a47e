"""Distributed helpers of the objectives, in one place: gathering both views' projections from
every rank (autograd-aware) so that an objective sees the global batch under DDP."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward sums every rank's gradient of each part and returns this
    rank's part (each rank's loss depends on every rank's rows)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> tuple[Tensor, ...]:
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:
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
