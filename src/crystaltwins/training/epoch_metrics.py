"""Per-epoch metrics accumulated on the device: no host synchronisation and no Lightning
``log`` call per step (each costs about as much as a small model's whole step)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor


class EpochMeans:
    """Crystal-weighted (or otherwise weighted: :meth:`add`) means over an epoch of per-batch
    metrics, one set per stage.

    :param names: the metrics, logged as ``{stage}_{name}``.
    :param progress: the metric shown in the progress bar.
    """

    def __init__(self, names: Sequence[str], progress: str | None = None) -> None:
        self.names = list(names)
        self.progress = progress
        self._sums: dict[str, Tensor] = {}

    def add(
        self,
        stage: str,
        count: int,
        values: Sequence[Tensor],
        weights: Sequence[Tensor | float | None] | None = None,
    ) -> None:
        """Add one batch: ``values`` (0-dim tensors, means over the batch's ``count`` crystals),
        in the order of :attr:`names`. ``weights``: what each value is a mean over instead of
        ``count`` (e.g. the labels known in the batch; ``None`` entries mean ``count``), so that
        the epoch's value is the mean over those."""
        means = torch.stack([v.detach().float() for v in values])
        denominators = means.new_full((len(values),), float(count))  # no host-device copy
        if weights is not None:
            if len(weights) != len(values):
                raise ValueError(f"{len(weights)} weights for {len(values)} values")
            for k, weight in enumerate(weights):
                if weight is not None:
                    denominators[k] = weight
        row = torch.cat((means * denominators, denominators))
        sums = self._sums.get(stage)
        self._sums[stage] = row if sums is None else sums + row

    def log(self, module: L.LightningModule, stage: str) -> None:
        """Log the epoch's means of ``stage`` (summed over every process first) and reset."""
        sums = self._sums.pop(stage, None)
        if sums is None:
            return
        sums = module.trainer.strategy.reduce(sums, reduce_op="sum")
        for name, value in zip(self.names, self._means(sums), strict=True):
            module.log(
                f"{stage}_{name}",
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=name == self.progress,
                batch_size=1,
            )

    def pop_means(self, stage: str) -> dict[str, Tensor]:
        """The epoch's means of ``stage`` in this process alone (no reduction across processes),
        by name; resets the stage. For loops that train without a Lightning trainer."""
        return dict(zip(self.names, self._means(self._sums.pop(stage)), strict=True))

    @staticmethod
    def _means(sums: Tensor) -> Tensor:
        """Weighted sums then their weights ``(2 N,)`` → the ``N`` means (0 without weight)."""
        totals, denominators = sums.chunk(2)
        return torch.where(denominators > 0, totals / denominators, 0.0)
