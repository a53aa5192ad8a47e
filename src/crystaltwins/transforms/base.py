"""Augmentations of crystal graphs: written once, on a whole batch (PyG style composition).

An augmentation follows :class:`GraphTransform`: one method, ``batch(arrays, rng)``, taking the
:class:`~crystaltwins.graph.batch.GraphArrays` of a batch and a NumPy random generator and
returning new arrays (the input is never modified: cached graphs are read-only memory maps).
That is what training calls. One crystal is a batch of one: :func:`apply_to_graph` (and
``__call__`` of every :class:`BatchTransform`) gives the view of a single
:class:`~crystaltwins.graph.crystal_graph.CrystalGraph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from crystaltwins.graph.batch import GraphArrays
from crystaltwins.graph.crystal_graph import CrystalGraph
from crystaltwins.graph.neighbors import NeighborList


class GraphTransform(Protocol):
    """An augmentation of a batch of crystal graphs."""

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        """The augmented view of every crystal of ``arrays`` (new arrays, input untouched)."""
        ...


def apply_to_graph(
    transform: GraphTransform, graph: CrystalGraph, rng: np.random.Generator
) -> CrystalGraph:
    """``transform``'s view of one crystal: its batch form on a batch of one."""
    arrays = GraphArrays.from_graphs([graph])
    view = transform.batch(arrays, rng)
    edges = NeighborList(
        view.edge_src.astype(graph.edges.src.dtype),
        view.edge_dst.astype(graph.edges.dst.dtype),
        _images(view.edge_shift, graph),
        np.asarray(view.edge_distance, dtype=graph.edges.distance.dtype),
    )
    candidates = graph.candidates
    if view.cand_src is not arrays.cand_src:  # a transform that changes the candidates
        shift = view.cand_shift
        vectors = view.positions[view.cand_dst] + shift - view.positions[view.cand_src]
        candidates = NeighborList(
            view.cand_src.astype(graph.candidates.src.dtype),
            view.cand_dst.astype(graph.candidates.dst.dtype),
            _images(shift, graph),
            np.linalg.norm(vectors, axis=1),
        )
    return replace(
        graph,
        atomic_numbers=np.asarray(view.atomic_numbers).astype(graph.atomic_numbers.dtype),
        positions=view.positions,
        edges=edges,
        candidates=candidates,
    )


def _images(shift: np.ndarray, graph: CrystalGraph) -> np.ndarray:
    """Periodic images ``n`` of Cartesian offsets ``n · L`` (Å) in ``graph``'s lattice."""
    return np.rint(shift @ np.linalg.inv(graph.lattice)).astype(graph.edges.image.dtype)


class BatchTransform:
    """Base class of the built-in augmentations: subclasses write :meth:`batch`; calling one on
    a single graph applies it to a batch of one."""

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        raise NotImplementedError

    def __call__(self, graph: CrystalGraph, rng: np.random.Generator) -> CrystalGraph:
        return apply_to_graph(self, graph, rng)


class Compose(BatchTransform):
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[GraphTransform]) -> None:
        self.transforms = list(transforms)

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        for transform in self.transforms:
            arrays = transform.batch(arrays, rng)
        return arrays

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"
