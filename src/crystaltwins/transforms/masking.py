"""Atom masking (AM) and edge masking (EM), as in Crystal Twins."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from crystaltwins.graph.crystal_graph import CrystalGraph


def _count(fraction: float, total: int) -> int:
    """``floor(fraction · total)``, at least one when ``total > 0``."""
    return min(total, max(1, int(np.floor(fraction * total)))) if total > 0 else 0


class AtomMasking:
    """Zero the element features of ``fraction`` of the atoms (at least one).

    A masked atom gets element number 0, whose feature row is all zeros.
    """

    def __init__(self, fraction: float = 0.1) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction

    def __call__(self, graph: CrystalGraph, rng: np.random.Generator) -> CrystalGraph:
        masked = rng.choice(graph.num_atoms, _count(self.fraction, graph.num_atoms), replace=False)
        atomic_numbers = np.array(graph.atomic_numbers, copy=True)
        atomic_numbers[masked] = 0
        return replace(graph, atomic_numbers=atomic_numbers)

    def __repr__(self) -> str:
        return f"AtomMasking(fraction={self.fraction})"


class EdgeMasking:
    """Remove ``fraction`` of the edges (at least one); no padding edges are added."""

    def __init__(self, fraction: float = 0.1) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction

    def __call__(self, graph: CrystalGraph, rng: np.random.Generator) -> CrystalGraph:
        n = len(graph.edges)
        removed = rng.choice(n, _count(self.fraction, n), replace=False)
        keep = np.ones(n, dtype=bool)
        keep[removed] = False
        return replace(graph, edges=graph.edges.take(keep))

    def __repr__(self) -> str:
        return f"EdgeMasking(fraction={self.fraction})"
