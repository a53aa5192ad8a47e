"""Epoch means of per-batch metrics: crystal-weighted, or weighted by what each value averages."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from crystaltwins.training.epoch_metrics import EpochMeans


class _Module:
    """What :meth:`EpochMeans.log` uses of a LightningModule: the strategy's reduce and log."""

    def __init__(self) -> None:
        self.trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: torch.Tensor, **_: Any) -> None:
        self.logged[name] = float(value)


def test_values_are_weighted_by_crystals_by_default() -> None:
    means = EpochMeans(["loss", "mae"])
    means.add("train", 2, [torch.tensor(1.0), torch.tensor(10.0)])
    means.add("train", 6, [torch.tensor(3.0), torch.tensor(20.0)])
    module = _Module()
    means.log(module, "train")
    assert module.logged["train_loss"] == pytest.approx((2 * 1 + 6 * 3) / 8)
    assert module.logged["train_mae"] == pytest.approx((2 * 10 + 6 * 20) / 8)


def test_a_value_averaged_over_fewer_items_is_weighted_by_them() -> None:
    """A masked mean (e.g. over the known auxiliary labels) is the mean over the epoch's known
    labels: a batch without any counts for nothing instead of pulling the mean to 0."""
    means = EpochMeans(["loss", "aux_loss"])
    means.add("val", 4, [torch.tensor(1.0), torch.tensor(0.0)], [None, torch.tensor(0)])
    means.add("val", 4, [torch.tensor(2.0), torch.tensor(0.5)], [None, torch.tensor(3)])
    means.add("val", 2, [torch.tensor(4.0), torch.tensor(2.0)], [None, 1])
    module = _Module()
    means.log(module, "val")
    assert module.logged["val_loss"] == pytest.approx((4 * 1 + 4 * 2 + 2 * 4) / 10)
    assert module.logged["val_aux_loss"] == pytest.approx((3 * 0.5 + 1 * 2.0) / 4)


def test_log_resets_the_stage_and_a_stage_without_batches_logs_nothing() -> None:
    means = EpochMeans(["loss"])
    means.add("train", 1, [torch.tensor(5.0)])
    module = _Module()
    means.log(module, "train")
    means.log(module, "val")
    assert module.logged == {"train_loss": 5.0}
    means.add("train", 1, [torch.tensor(1.0)])
    means.log(module, "train")
    assert module.logged["train_loss"] == 1.0


def test_weights_must_match_the_values_and_may_be_fractional() -> None:
    means = EpochMeans(["loss", "aux_loss"])
    with pytest.raises(ValueError, match="1 weights for 2 values"):
        means.add("train", 2, [torch.tensor(1.0), torch.tensor(2.0)], [None])
    means.add("train", 2, [torch.tensor(1.0), torch.tensor(2.0)], [None, 0.5])
    means.add("train", 2, [torch.tensor(3.0), torch.tensor(4.0)], [None, 0.25])
    module = _Module()
    means.log(module, "train")
    assert module.logged["train_aux_loss"] == pytest.approx((0.5 * 2 + 0.25 * 4) / 0.75)


def test_pop_means_gives_this_process_means_by_name_and_resets() -> None:
    means = EpochMeans(["loss", "mae"])
    means.add("val", 1, [torch.tensor(1.0), torch.tensor(4.0)])
    means.add("val", 3, [torch.tensor(3.0), torch.tensor(8.0)])
    popped = means.pop_means("val")
    assert {k: float(v) for k, v in popped.items()} == {"loss": 2.5, "mae": 7.0}
    module = _Module()
    means.log(module, "val")
    assert module.logged == {}
