"""Epoch-seeded sampling: the same order in an epoch, whether a run was resumed or not."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Yields ``(index, epoch)`` keys for a :class:`~crystaltwins.data.dataset.TwoViewDataset`
    (or plain indices with ``with_epoch=False``), shuffled by ``(seed, epoch)``.

    With ``fixed_epoch`` every epoch yields the order (and the keys) of that epoch: a fixed
    validation set, augmented and ordered the same way at every evaluation.

    Under ``torch.distributed`` each rank takes every ``world_size``-th element of the (padded)
    order, as ``DistributedSampler`` does; the rank is read when the order is drawn, not when the
    sampler is made (Lightning starts the process group inside ``fit``, after the loaders are
    built). Padding repeats at most ``world_size - 1`` crystals so that every rank takes as many
    steps. Lightning calls :meth:`set_epoch` every epoch.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int = 0,
        with_epoch: bool = True,
        fixed_epoch: int | None = None,
    ) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.with_epoch = with_epoch
        self.fixed_epoch = fixed_epoch
        self.epoch = 0

    @property
    def world_size(self) -> int:
        distributed = dist.is_available() and dist.is_initialized()
        return dist.get_world_size() if distributed else 1

    @property
    def rank(self) -> int:
        distributed = dist.is_available() and dist.is_initialized()
        return dist.get_rank() if distributed else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        else:
            order = np.arange(self.size)
        world_size = self.world_size
        if world_size > 1:
            per_rank = -(-self.size // world_size)
            order = np.resize(order, per_rank * world_size)[self.rank :: world_size]
        return order

    def __iter__(self) -> Iterator:
        epoch = self.epoch if self.fixed_epoch is None else self.fixed_epoch
        for index in self._order(epoch).tolist():
            yield (index, epoch) if self.with_epoch else index

    def __len__(self) -> int:
        world_size = self.world_size
        return -(-self.size // world_size) if world_size > 1 else self.size
