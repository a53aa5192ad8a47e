"""The batch the encoder sees: several crystal graphs stacked into one disconnected graph
(:class:`CrystalGraphBatch`, tensors), and the same graphs as NumPy arrays before augmentation
(:class:`GraphArrays`). Plain containers: no cache, dataset or loader behind them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class CrystalGraphBatch:
    """Crystal graphs of a batch, concatenated.

    Atom and edge indices are global within the batch.

    :param atomic_numbers: ``(n_atoms,)`` int64 element numbers Z; ``0`` marks a masked atom
        (its element features are all zero).
    :param edge_index: ``(2, n_edges)`` int64; row 0 the centre atom *i*, row 1 its neighbour *j*.
        Edges of one centre are contiguous and ordered by distance.
    :param edge_distance: ``(n_edges,)`` float32 distances |r_j + image·L − r_i| in Å.
    :param crystal_index: ``(n_atoms,)`` int64, the crystal (0..num_crystals-1) of every atom.
    :param num_crystals: number of crystals in the batch.
    :param targets: ``(num_crystals, n_targets)`` float32 labels, or ``None`` (NaN where missing).
    :param ids: the crystals' ids, in batch order.
    :param original_atomic_numbers: ``(n_atoms,)`` int64 true Z of every atom of an augmented
        view whose atoms were masked (the masked ones are where it differs from
        ``atomic_numbers``), else ``None``.
    :param clean_edge_distance: ``(n_edges,)`` float32 length in Å of every edge of a view whose
        atoms were moved, in the structure before the move, else ``None``.
    """

    atomic_numbers: Tensor
    edge_index: Tensor
    edge_distance: Tensor
    crystal_index: Tensor
    num_crystals: int
    targets: Tensor | None = None
    ids: list[str] = field(default_factory=list)
    original_atomic_numbers: Tensor | None = None
    clean_edge_distance: Tensor | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_distance.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CrystalGraphBatch:
        """Move every tensor to ``device`` (Lightning calls this)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            atomic_numbers=move(self.atomic_numbers),
            edge_index=move(self.edge_index),
            edge_distance=move(self.edge_distance),
            crystal_index=move(self.crystal_index),
            targets=move(self.targets),
            original_atomic_numbers=move(self.original_atomic_numbers),
            clean_edge_distance=move(self.clean_edge_distance),
        )

    def pin_memory(self) -> CrystalGraphBatch:
        def pin(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.pin_memory()

        return replace(
            self,
            atomic_numbers=self.atomic_numbers.pin_memory(),
            edge_index=self.edge_index.pin_memory(),
            edge_distance=self.edge_distance.pin_memory(),
            crystal_index=self.crystal_index.pin_memory(),
            targets=pin(self.targets),
            original_atomic_numbers=pin(self.original_atomic_numbers),
            clean_edge_distance=pin(self.clean_edge_distance),
        )


@dataclass
class GraphArrays:
    """Several crystal graphs concatenated as NumPy arrays, before augmentation.

    Augmentations can act on a whole batch at once (:meth:`~crystaltwins.transforms.Compose.batch`),
    which costs a few vectorised NumPy calls per batch instead of per crystal. Atom indices are
    global within the batch.

    :param atomic_numbers: ``(A,)`` int64, 0 for a masked atom.
    :param positions: ``(A, 3)`` Cartesian coordinates, Å.
    :param atom_crystal: ``(A,)`` int64 crystal of each atom.
    :param edge_src: ``(E,)`` int64, grouped by centre, nearest first.
    :param edge_dst: ``(E,)`` int64.
    :param edge_shift: ``(E, 3)`` float64 Cartesian offset ``image · L`` of the neighbour, Å.
    :param edge_distance: ``(E,)`` float64, Å.
    :param cand_src: ``(C,)`` candidate edges (see :func:`~crystaltwins.graph.neighbors.find_neighbors`).
    :param cand_dst: ``(C,)``.
    :param cand_shift: ``(C, 3)``.
    :param original_atomic_numbers: ``(A,)`` the atoms' Z before any was masked (set by the
        first atom masking), else ``None``.
    :param clean_positions: ``(A, 3)`` Cartesian coordinates in Å before any atom moved (set by
        the first perturbation), else ``None``.
    """

    atomic_numbers: Any
    positions: Any
    atom_crystal: Any
    edge_src: Any
    edge_dst: Any
    edge_shift: Any
    edge_distance: Any
    cand_src: Any
    cand_dst: Any
    cand_shift: Any
    num_crystals: int
    ids: list[str] = field(default_factory=list)
    targets: Any = None
    original_atomic_numbers: Any = None
    clean_positions: Any = None

    @classmethod
    def from_graphs(cls, graphs: Sequence[Any], targets: Sequence[str] = ()) -> GraphArrays:
        """Concatenate :class:`~crystaltwins.graph.crystal_graph.CrystalGraph` objects."""
        n = len(graphs)
        atom_counts = np.fromiter((g.atomic_numbers.shape[0] for g in graphs), np.int64, n)
        edge_counts = np.fromiter((len(g.edges) for g in graphs), np.int64, n)
        cand_counts = np.fromiter((len(g.candidates) for g in graphs), np.int64, n)
        offsets = np.zeros(n, dtype=np.int64)
        np.cumsum(atom_counts[:-1], out=offsets[1:])
        lattices = np.stack([g.lattice for g in graphs])

        def edges(name: str, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            lists = [getattr(g, name) for g in graphs]
            shift = np.repeat(offsets, counts)
            crystal = np.repeat(np.arange(n), counts)
            src = np.concatenate([e.src for e in lists]).astype(np.int64) + shift
            dst = np.concatenate([e.dst for e in lists]).astype(np.int64) + shift
            image = np.concatenate([e.image for e in lists]).astype(np.float64)
            cart = np.einsum("ei,eij->ej", image, lattices[crystal])
            return src, dst, cart

        edge_src, edge_dst, edge_shift = edges("edges", edge_counts)
        cand_src, cand_dst, cand_shift = edges("candidates", cand_counts)
        values = None
        if targets:
            values = np.array(
                [[g.labels.get(t, np.nan) for t in targets] for g in graphs], dtype=np.float32
            )
        return cls(
            atomic_numbers=np.concatenate([g.atomic_numbers for g in graphs]).astype(np.int64),
            positions=np.concatenate([g.positions for g in graphs]),
            atom_crystal=np.repeat(np.arange(n, dtype=np.int64), atom_counts),
            edge_src=edge_src,
            edge_dst=edge_dst,
            edge_shift=edge_shift,
            edge_distance=np.concatenate([g.edges.distance for g in graphs]).astype(np.float64),
            cand_src=cand_src,
            cand_dst=cand_dst,
            cand_shift=cand_shift,
            num_crystals=n,
            ids=[g.id for g in graphs],
            targets=values,
        )

    def clean_edge_distance(self) -> np.ndarray | None:
        """``(E,)`` float64 length in Å of every edge in the structure before the atoms moved
        (``clean_positions``), or ``None`` when they did not move."""
        if self.clean_positions is None:
            return None
        vectors = self.clean_positions[self.edge_dst] + self.edge_shift
        vectors -= self.clean_positions[self.edge_src]
        return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))

    def to_batch(self) -> CrystalGraphBatch:
        """The tensors the encoder sees (and what the views' pretext tasks need)."""
        clean = self.clean_edge_distance()
        return CrystalGraphBatch(
            atomic_numbers=torch.from_numpy(self.atomic_numbers),
            edge_index=torch.from_numpy(np.stack([self.edge_src, self.edge_dst])),
            edge_distance=torch.from_numpy(self.edge_distance.astype(np.float32)),
            crystal_index=torch.from_numpy(self.atom_crystal),
            num_crystals=self.num_crystals,
            targets=None if self.targets is None else torch.from_numpy(self.targets),
            ids=list(self.ids),
            original_atomic_numbers=None
            if self.original_atomic_numbers is None
            else torch.from_numpy(np.asarray(self.original_atomic_numbers, dtype=np.int64)),
            clean_edge_distance=None
            if clean is None
            else torch.from_numpy(clean.astype(np.float32)),
        )
