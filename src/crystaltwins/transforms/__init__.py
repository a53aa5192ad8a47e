"""Augmented views: transforms of cached crystal graphs (Crystal Twins' RP, AM, EM)."""

from __future__ import annotations

from collections.abc import Sequence

from crystaltwins.graph.settings import GraphSettings
from crystaltwins.transforms.base import Compose, GraphTransform
from crystaltwins.transforms.masking import AtomMasking, EdgeMasking
from crystaltwins.transforms.perturbation import RandomPerturbation

#: Names accepted by ``--augment``.
AUGMENTATIONS = ("rp", "am", "em")

__all__ = [
    "AUGMENTATIONS",
    "AtomMasking",
    "Compose",
    "EdgeMasking",
    "GraphTransform",
    "RandomPerturbation",
    "build_augmentation",
]


def build_augmentation(
    names: Sequence[str] | str,
    settings: GraphSettings | None = None,
    perturbation: float = 0.05,
    atom_mask_fraction: float = 0.1,
    edge_mask_fraction: float = 0.1,
) -> Compose:
    """The augmentation named by ``names`` (e.g. ``"rp,am,em"``), applied in the order RP, AM, EM."""
    if isinstance(names, str):
        names = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; choose from {', '.join(AUGMENTATIONS)}")
    transforms: list[GraphTransform] = []
    if "rp" in names:
        transforms.append(RandomPerturbation(perturbation, settings=settings))
    if "am" in names:
        transforms.append(AtomMasking(atom_mask_fraction))
    if "em" in names:
        transforms.append(EdgeMasking(edge_mask_fraction))
    return Compose(transforms)
