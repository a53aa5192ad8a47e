"""The batch the encoder sees: several crystal graphs stacked into one disconnected graph."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    """

    atomic_numbers: Tensor
    edge_index: Tensor
    edge_distance: Tensor
    crystal_index: Tensor
    num_crystals: int
    targets: Tensor | None = None
    ids: list[str] = field(default_factory=list)

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
        )

    def pin_memory(self) -> CrystalGraphBatch:
        return replace(
            self,
            atomic_numbers=self.atomic_numbers.pin_memory(),
            edge_index=self.edge_index.pin_memory(),
            edge_distance=self.edge_distance.pin_memory(),
            crystal_index=self.crystal_index.pin_memory(),
            targets=None if self.targets is None else self.targets.pin_memory(),
        )
