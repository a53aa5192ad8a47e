"""Self-supervised objectives.

Every objective is an :class:`torch.nn.Module` whose ``forward(z_a, z_b)`` takes the
projections ``(N, D)`` of two views of the same crystals and returns a scalar loss. An objective
may own parameters (SimSiam's predictor): optimise ``objective.parameters()`` with the model's.

Adding an objective (VICReg, NT-Xent, ...) is one new module in this package with such a class
and one entry in :data:`OBJECTIVES`; nothing else changes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from crystaltwins.losses.barlow_twins import BarlowTwinsLoss, gather_from_all_ranks, standardize
from crystaltwins.losses.simsiam import SimSiamLoss

#: Objective name → class.
OBJECTIVES: dict[str, type[nn.Module]] = {
    "barlow_twins": BarlowTwinsLoss,
    "simsiam": SimSiamLoss,
}


def build_objective(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate an objective by name.

    :param name: a key of :data:`OBJECTIVES` (case and ``-``/``_`` insensitive).
    :param kwargs: constructor arguments of the objective.
    :raises KeyError: for an unknown name.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[key](**kwargs)


__all__ = [
    "OBJECTIVES",
    "BarlowTwinsLoss",
    "SimSiamLoss",
    "build_objective",
    "gather_from_all_ranks",
    "standardize",
]
