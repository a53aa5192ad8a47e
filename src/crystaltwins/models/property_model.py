"""One property model: encoder + head + what turns the head's output into the target's units.

Training, its metrics, ``test_predictions.csv`` and :func:`crystaltwins.evaluation.inference.predict`
all convert through :class:`PropertyModel`, so the conversion exists once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.models.targets import TRANSFORMS, check_transform

TASKS = ("regression", "classification")
#: A model file's ``info`` entry listing the auxiliary targets a regression head learned in its
#: outputs ``1, 2, ..`` (multi-task training): ``[{"column", "mean", "std"}, ...]``, the
#: standardisation of each. Predictions use output 0 only.
AUX_TARGETS_KEY = "aux_targets"
#: At most this many auxiliary targets (checked in a run's settings and in model files).
MAX_AUX_TARGETS = 100
#: Column names an auxiliary target cannot have: ``predict`` writes each as ``predicted_<column>``,
#: and ``predicted_class`` is a classifier's column.
RESERVED_AUX_NAMES = frozenset({"class"})


def aux_target_columns(info: Mapping[str, Any]) -> list[str]:
    """The auxiliary targets a model file's ``info`` records (``[]`` without any), in order."""
    return [str(entry["column"]) for entry in info.get(AUX_TARGETS_KEY) or []]


@dataclass(frozen=True)
class Target:
    """What a property model predicts, and how its head's output relates to it.

    A regression head is trained on ``(transform(y) - mean) / std``: ``y`` in its own units
    (e.g. G_VRH in GPa), transformed (``log10`` or not), standardised with the training split's
    ``mean`` and ``std`` (of the transformed values). A classifier's head gives 2 logits.

    :param column: the label column ``y`` was read from.
    :param unit: unit of ``y`` (e.g. ``eV/atom``), ``""`` when unknown.
    """

    column: str = "y"
    unit: str = ""
    transform: str = "none"
    mean: float = 0.0
    std: float = 1.0
    task: str = "regression"

    def __post_init__(self) -> None:
        check_transform(self.transform)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.std > 0:
            raise ValueError(f"the target's std must be > 0, got {self.std}")

    @property
    def name(self) -> str:
        """The name of the values the metrics use: ``column``, or e.g. ``log10(column)``."""
        return self.column if self.transform == "none" else f"{self.transform}({self.column})"

    @property
    def out_dim(self) -> int:
        """Outputs of the head: 1, or 2 logits for a classifier."""
        return 2 if self.task == "classification" else 1

    def to_info(self) -> dict[str, Any]:
        """The entries of a model file's ``info`` that describe the target."""
        return {
            "targets": [self.name],
            "target_column": self.column,
            "unit": self.unit,
            "target_transform": self.transform,
            "target_mean": float(self.mean),
            "target_std": float(self.std),
            "task": self.task,
        }

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Target:
        """The target described by a model file's ``info`` (files of earlier versions have no
        ``unit`` nor ``target_column``: the column is then read from ``targets``)."""
        transform = info.get("target_transform", "none")
        column = info.get("target_column")
        if column is None:
            name = (info.get("targets") or ["y"])[0]
            prefix = f"{transform}("
            column = name[len(prefix) : -1] if name.startswith(prefix) else name
        return cls(
            column=column,
            unit=info.get("unit", ""),
            transform=transform,
            mean=float(info.get("target_mean", 0.0)),
            std=float(info.get("target_std", 1.0)),
            task=info.get("task", "regression"),
        )


def _as_tensor(values: Any) -> tuple[Tensor, bool]:
    if isinstance(values, Tensor):
        return values, False
    return torch.from_numpy(np.asarray(values)), True


class PropertyModel(nn.Module):
    """Encoder + property head + the :class:`Target` they predict.

    :param encoder: a crystal encoder, ``batch → (B, H)`` (pre-trained or fresh).
    :param head: ``(B, H) → (B, out)``, e.g. :class:`~crystaltwins.models.PropertyHead`.
    :param target: what the head's outputs stand for; plain outputs (no standardisation) when
        ``None``.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, target: Target | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.target = target or Target()

    def forward(self, batch: CrystalGraphBatch) -> Tensor:
        """The head's outputs ``(B, out)`` (standardised transformed target, or logits)."""
        return self.head(self.encoder(batch))

    def standardise(self, values: Tensor) -> Tensor:
        """Transformed target values as the regression head is trained to output them."""
        return (values - self.target.mean) / self.target.std

    def transformed(self, outputs: Any) -> Any:
        """Head outputs ``(B, out)`` → ``(B,)`` predictions in the metrics' units: the
        transformed target (e.g. log10 GPa), or P(class 1) for a classifier. NumPy arrays or
        tensors; the result is of the same kind."""
        if self.target.task == "regression":
            return outputs[:, 0] * self.target.std + self.target.mean
        values, numpy = _as_tensor(outputs)
        probability = values.float().softmax(dim=-1)[:, 1]
        return probability.numpy() if numpy else probability

    def in_target_units(self, outputs: Any) -> Any:
        """Head outputs ``(B, out)`` → ``(B,)`` predictions in the target's own units (any
        transform undone, e.g. GPa), or P(class 1) for a classifier."""
        values = self.transformed(outputs)
        if self.target.task == "classification":
            return values
        return TRANSFORMS[self.target.transform][1](values)

    @torch.no_grad()
    def predict(self, batch: CrystalGraphBatch) -> Tensor:
        """Predictions ``(B,)`` in the target's own units (or P(class 1))."""
        return self.in_target_units(self(batch))
