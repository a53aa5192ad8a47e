"""Transforms of crystal graphs: small callables composed with :class:`Compose` (PyG style).

Every transform takes a :class:`~crystaltwins.graph.crystal_graph.CrystalGraph` and a NumPy
random generator and returns a new graph; the input is never modified (cached graphs are
read-only memory maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from crystaltwins.graph.crystal_graph import CrystalGraph


class GraphTransform(Protocol):
    def __call__(self, graph: CrystalGraph, rng: np.random.Generator) -> CrystalGraph: ...


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[GraphTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, graph: CrystalGraph, rng: np.random.Generator) -> CrystalGraph:
        for transform in self.transforms:
            graph = transform(graph, rng)
        return graph

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"
