"""K property models of one architecture trained as one (stacked parameters): see
:mod:`.base`. :func:`stack_models` picks the architecture's class."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from crystaltwins.models.grouped.base import MemberBatch, StackedModels, masked_segment_softmax
from crystaltwins.models.grouped.cgcnn import GroupedPropertyModels
from crystaltwins.models.grouped.gatgnn import GroupedGATGNN
from crystaltwins.models.grouped.gin import GroupedGIN

#: The stacked class of every architecture that stacks.
STACKED_CLASSES: tuple[type[StackedModels], ...] = (
    GroupedPropertyModels,
    GroupedGIN,
    GroupedGATGNN,
)
#: Encoders whose members can be stacked.
GROUPED_ENCODERS = tuple(t for cls in STACKED_CLASSES for t in cls.encoder_types)


def stack_models(encoders: Sequence[nn.Module], heads: Sequence[nn.Module]) -> StackedModels:
    """The members' (encoder, head) pairs stacked by their architecture's class.

    :raises ValueError: encoders of different or unstackable classes, or mismatched settings.
    """
    kinds = {type(e) for e in encoders}
    for cls in STACKED_CLASSES:
        if len(kinds) == 1 and issubclass(next(iter(kinds)), cls.encoder_types):
            return cls(encoders, heads)
    names = sorted(k.__name__ for k in kinds)
    raise ValueError(f"only encoders of one stackable kind train together; got {names}")


__all__ = [
    "GROUPED_ENCODERS",
    "STACKED_CLASSES",
    "GroupedGATGNN",
    "GroupedGIN",
    "GroupedPropertyModels",
    "MemberBatch",
    "StackedModels",
    "masked_segment_softmax",
    "stack_models",
]
