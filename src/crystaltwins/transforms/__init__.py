"""Augmented views: transforms of cached crystal graphs (Crystal Twins' RP, AM, EM).

Adding an augmentation is one new module with a class following
:class:`~crystaltwins.transforms.base.GraphTransform` (a ``batch(arrays, rng)`` method; subclass
:class:`~crystaltwins.transforms.base.BatchTransform` to call it on one graph too) and one entry
in :data:`AUGMENTATIONS` (or a call to :func:`register_augmentation`); ``--augment`` then takes
its name. Its constructor's keyword arguments are its settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from crystaltwins.graph.settings import GraphSettings
from crystaltwins.transforms.base import (
    BatchTransform,
    Compose,
    GraphTransform,
    apply_to_graph,
)
from crystaltwins.transforms.masking import AtomMasking, EdgeMasking
from crystaltwins.transforms.perturbation import GaussianNoise, RandomPerturbation

#: Augmentation name → class (what ``--augment`` takes); a composition applies them in this order
#: (moves first: they re-select the neighbours, which would undo an edge masking done before).
AUGMENTATIONS: dict[str, type] = {
    "rp": RandomPerturbation,
    "gn": GaussianNoise,
    "am": AtomMasking,
    "em": EdgeMasking,
}

__all__ = [
    "AUGMENTATIONS",
    "AtomMasking",
    "BatchTransform",
    "Compose",
    "EdgeMasking",
    "GaussianNoise",
    "GraphTransform",
    "RandomPerturbation",
    "apply_to_graph",
    "build_augmentation",
    "parse_augmentations",
    "register_augmentation",
]


def register_augmentation(name: str, cls: type | None = None) -> Any:
    """Register an augmentation class under ``name``; usable as a decorator."""

    def add(cls: type) -> type:
        if AUGMENTATIONS.get(name, cls) is not cls:
            raise ValueError(f"augmentation {name!r} is already registered")
        AUGMENTATIONS[name] = cls
        return cls

    return add if cls is None else add(cls)


def parse_augmentations(names: Sequence[str] | str) -> list[str]:
    """Registered names of ``names`` (a list, or a comma-separated string such as ``"rp,am"``).

    :raises ValueError: naming the unknown ones and the registered ones.
    """
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; choose from {', '.join(AUGMENTATIONS)}")
    return names


def build_augmentation(
    names: Sequence[str] | str,
    settings: GraphSettings | None = None,
    perturbation: float | None = None,
    atom_mask_fraction: float | None = None,
    edge_mask_fraction: float | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Compose:
    """The augmentations named by ``names`` (e.g. ``"rp,am,em"``), composed in the order of
    :data:`AUGMENTATIONS` (RP, GN, AM, EM, then those registered later).

    :param settings: the graph cache's settings, given to augmentations that take ``settings``
        (RP re-selects neighbours within its radius).
    :param perturbation: RP's ``distance`` in Å; ``None``: its default.
    :param atom_mask_fraction: AM's ``fraction``; ``None``: its default.
    :param edge_mask_fraction: EM's ``fraction``; ``None``: its default.
    :param options: more constructor arguments by augmentation name, e.g. ``{"rp":
        {"min_distance": 0.01}}`` or ``{"gn": {"sigma": 0.1}}``.
    """
    chosen = set(parse_augmentations(names))
    given: dict[str, dict[str, Any]] = {name: {} for name in AUGMENTATIONS}
    for name, key, value in (
        ("rp", "distance", perturbation),
        ("am", "fraction", atom_mask_fraction),
        ("em", "fraction", edge_mask_fraction),
    ):
        if value is not None:
            given[name][key] = value
    for name, values in (options or {}).items():
        given[parse_augmentations([name])[0]].update(values)
    transforms = []
    for name, cls in AUGMENTATIONS.items():
        if name not in chosen:
            continue
        kwargs = given[name]
        if settings is not None and "settings" in inspect.signature(cls).parameters:
            kwargs = {"settings": settings, **kwargs}
        transforms.append(cls(**kwargs))
    return Compose(transforms)
