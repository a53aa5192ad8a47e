"""Atom masking (AM) and edge masking (EM), as in Crystal Twins."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from crystaltwins.graph.batch import GraphArrays
from crystaltwins.transforms.base import BatchTransform


class AtomMasking(BatchTransform):
    """Zero the element features of ``fraction`` of the atoms (at least one; none for 0).

    A masked atom gets element number 0, whose feature row is all zeros. The batch form keeps
    the true numbers in ``original_atomic_numbers`` (the targets of masked-element prediction).
    """

    def __init__(self, fraction: float = 0.1) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        """Masks ``fraction`` of every crystal's atoms (at least one)."""
        masked = random_subset_per_group(
            arrays.atom_crystal, arrays.num_crystals, self.fraction, rng
        )
        original = arrays.original_atomic_numbers
        return replace(
            arrays,
            atomic_numbers=np.where(masked, 0, arrays.atomic_numbers),
            original_atomic_numbers=arrays.atomic_numbers if original is None else original,
        )

    def __repr__(self) -> str:
        return f"AtomMasking(fraction={self.fraction})"


class EdgeMasking(BatchTransform):
    """Remove ``fraction`` of the edges.

    ``per="atom"`` (default, as Crystal Twins): ``floor(fraction · degree)`` random edges of every
    centre atom (the reference keeps ``ceil(0.9 · 12) = 11`` of each atom's 12: one edge per
    atom); ``per="crystal"``: ``floor(fraction · E)`` (at least one) random edges of every
    crystal, anywhere in it (this package's earlier definition). The masked edges are removed:
    the reference instead points each one at the crystal's first atom at ``radius + 1`` Å
    (a neighbour slot whose distance features are ~0 but which still passes a gated message).
    """

    def __init__(self, fraction: float = 0.1, per: str = "atom") -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if per not in ("atom", "crystal"):
            raise ValueError(f"per must be 'atom' or 'crystal', got {per!r}")
        self.fraction = fraction
        self.per = per

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        """Removes ``fraction`` of every atom's (or crystal's) edges."""
        if self.per == "atom":
            group, groups, at_least_one = arrays.edge_src, len(arrays.atomic_numbers), False
        else:
            group, groups, at_least_one = (
                arrays.atom_crystal[arrays.edge_src],
                arrays.num_crystals,
                True,
            )
        keep = ~random_subset_per_group(group, groups, self.fraction, rng, at_least_one)
        return replace(
            arrays,
            edge_src=arrays.edge_src[keep],
            edge_dst=arrays.edge_dst[keep],
            edge_shift=arrays.edge_shift[keep],
            edge_distance=arrays.edge_distance[keep],
        )

    def __repr__(self) -> str:
        return f"EdgeMasking(fraction={self.fraction}, per={self.per!r})"


def random_subset_per_group(
    group: np.ndarray,
    num_groups: int,
    fraction: float,
    rng: np.random.Generator,
    at_least_one: bool = True,
) -> np.ndarray:
    """Mask choosing ``floor(fraction · size)`` random members of every group (at least one
    with ``at_least_one``, unless ``fraction`` is 0: then none).

    :param group: ``(M,)`` int64 group of every member (crystal of an atom or of an edge, or
        centre atom of an edge).
    """
    sizes = np.bincount(group, minlength=num_groups)
    wanted = np.floor(fraction * sizes).astype(np.int64)
    if at_least_one and fraction > 0:
        wanted = np.maximum(1, wanted)
    wanted = np.where(sizes > 0, np.minimum(sizes, wanted), 0)
    order = np.argsort(group + rng.random(group.shape[0]))  # grouped, random order within a group
    starts = np.zeros(num_groups, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    sorted_group = group[order]
    rank = np.arange(group.shape[0]) - starts[sorted_group]
    chosen = np.zeros(group.shape[0], dtype=bool)
    chosen[order[rank < wanted[sorted_group]]] = True
    return chosen
