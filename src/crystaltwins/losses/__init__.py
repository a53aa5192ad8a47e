"""Self-supervised objectives.

Every objective is an :class:`torch.nn.Module` **without parameters** (as in lightly) whose
``forward(z_a, z_b)`` takes the projections ``(N, D)`` of two views of the same crystals and
returns a scalar loss. An objective whose class sets ``uses_predictor = True`` (SimSiam) is called
``forward(z_a, z_b, p_a, p_b)`` with the predictions of the model's predictor head, which the
pre-training module owns and saves with the model.

An *atom-level* objective (class attribute ``uses_atoms = True``: masked-element prediction,
distance denoising) is called once per view as ``forward(atom_embeddings, view, head)`` with the
encoder's atom embeddings ``(n_atoms, A)`` of the view, the view itself
(:class:`~crystaltwins.graph.batch.CrystalGraphBatch`) and its head, which the objective makes
(``make_head(atom_dim, num_elements, radius)``) and the pre-training module owns;
``needs_augmentation`` names the augmentations (any one) its views need.

Adding an objective is one new module with such a class and one entry in :data:`OBJECTIVES` (or
a call to :func:`register_objective`); nothing else changes. Its constructor's keyword arguments
are its settings (:func:`build_objective`). Objectives are summed with weights by
:mod:`crystaltwins.training.objectives` (``--objective barlow_twins+denoise``).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from crystaltwins.losses.barlow_twins import BarlowTwinsLoss, standardize
from crystaltwins.losses.denoising import DistanceDenoisingLoss
from crystaltwins.losses.distributed import gather_from_all_ranks
from crystaltwins.losses.masked_element import MaskedElementLoss
from crystaltwins.losses.nt_xent import NTXentLoss
from crystaltwins.losses.simsiam import SimSiamLoss
from crystaltwins.losses.vicreg import VICRegLoss

#: Objective name → class.
OBJECTIVES: dict[str, type[nn.Module]] = {
    "barlow_twins": BarlowTwinsLoss,
    "simsiam": SimSiamLoss,
    "vicreg": VICRegLoss,
    "nt_xent": NTXentLoss,
    "masked_element": MaskedElementLoss,
    "denoise": DistanceDenoisingLoss,
}


def register_objective(name: str, cls: type[nn.Module] | None = None) -> Any:
    """Register an objective class under ``name``; usable as a decorator."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if OBJECTIVES.get(name, cls) is not cls:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = cls
        return cls

    return add if cls is None else add(cls)


def objective_class(name: str) -> type[nn.Module]:
    """The objective class registered as ``name`` (case and ``-``/``_`` insensitive).

    :raises ValueError: for an unknown name, naming the registered ones.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[key]


def build_objective(name: str, **settings: Any) -> nn.Module:
    """Instantiate an objective by name.

    :param name: a key of :data:`OBJECTIVES` (case and ``-``/``_`` insensitive).
    :param settings: settings of the objectives (e.g. ``lambda_`` of Barlow Twins); those its
        constructor does not take are left aside, so one config can hold every objective's.
    :raises ValueError: for an unknown name, or an objective with parameters.
    """
    cls = objective_class(name)
    own_init = cls.__init__ is not nn.Module.__init__  # nn.Module's takes (*args, **kwargs)
    accepted = inspect.signature(cls.__init__).parameters if own_init else {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    objective = cls(**{k: v for k, v in settings.items() if takes_any or k in accepted})
    if any(True for _ in objective.parameters()):
        raise ValueError(
            f"objective {name!r} has parameters; put them in a head of the model instead "
            "(objectives are parameter-free)"
        )
    return objective


__all__ = [
    "OBJECTIVES",
    "BarlowTwinsLoss",
    "DistanceDenoisingLoss",
    "MaskedElementLoss",
    "NTXentLoss",
    "SimSiamLoss",
    "VICRegLoss",
    "build_objective",
    "gather_from_all_ranks",
    "objective_class",
    "register_objective",
    "standardize",
]
