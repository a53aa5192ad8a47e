"""Transforms of crystal graphs: small callables composed with :class:`Compose` (PyG style).

Every transform takes a :class:`~crystaltwins.graph.crystal_graph.CrystalGraph` and a NumPy
random generator and returns a new graph; the input is never modified (cached graphs are
read-only memory maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from crystaltwins.data.batch import GraphArrays
from crystaltwins.graph.crystal_graph import CrystalGraph


class GraphTransform(Protocol):
    """A transform of one graph; transforms that can also act on a whole batch at once have
    a ``batch(arrays: GraphArrays, rng) -> GraphArrays`` method."""

    def __call__(self, graph: CrystalGraph, rng: np.random.Generator) -> CrystalGraph: ...


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[GraphTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, graph: CrystalGraph, rng: np.random.Generator) -> CrystalGraph:
        for transform in self.transforms:
            graph = transform(graph, rng)
        return graph

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        """Apply the transforms' batch versions to a whole :class:`GraphArrays` batch."""
        for transform in self.transforms:
            arrays = transform.batch(arrays, rng)  # type: ignore[attr-defined]
        return arrays

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"
