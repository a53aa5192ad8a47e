"""Per-epoch metrics accumulated on the device: no host synchronisation and no Lightning
``log`` call per step (each costs about as much as a small model's whole step)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor


class EpochMeans:
    """Crystal-weighted means over an epoch of per-batch metrics, one set per stage.

    :param names: the metrics, logged as ``{stage}_{name}``.
    :param progress: the metric shown in the progress bar.
    """

    def __init__(self, names: Sequence[str], progress: str | None = None) -> None:
        self.names = list(names)
        self.progress = progress
        self._sums: dict[str, Tensor] = {}

    def add(self, stage: str, count: int, values: Sequence[Tensor]) -> None:
        """Add one batch: ``values`` (0-dim tensors, means over the batch's ``count`` crystals),
        in the order of :attr:`names`."""
        row = torch.stack([v.detach().float() for v in values]) * count
        row = torch.cat((row, row.new_tensor([float(count)])))
        sums = self._sums.get(stage)
        self._sums[stage] = row if sums is None else sums + row

    def log(self, module: L.LightningModule, stage: str) -> None:
        """Log the epoch's means of ``stage`` (summed over every process first) and reset."""
        sums = self._sums.pop(stage, None)
        if sums is None:
            return
        sums = module.trainer.strategy.reduce(sums, reduce_op="sum")
        means = sums[:-1] / sums[-1].clamp_min(1.0)
        for name, value in zip(self.names, means, strict=True):
            module.log(
                f"{stage}_{name}",
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=name == self.progress,
                batch_size=1,
            )
