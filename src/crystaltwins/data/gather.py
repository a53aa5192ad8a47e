"""Batches as array arithmetic: crystals gathered from a cache's flat arrays by their offsets.

A graph cache stores every crystal's atoms and edges as rows of flat arrays with per-crystal
offsets (:mod:`crystaltwins.data.cache`). A batch of crystal indices is therefore a set of row
ranges: :func:`ragged_rows` turns the ranges into one index array (a few vectorised NumPy
calls, no Python loop over crystals), and :class:`GraphStore` gathers the rows and shifts the
crystal-local edge indices to batch-global ones.

The index arithmetic always runs on the host (it only touches the ``(N + 1,)`` offsets); the
gathered arrays live either in the memory-mapped cache (host; only the rows of the batch are
read, nothing else is copied into memory) or on a device, copied there once
(:meth:`GraphStore.to`), so that making a batch moves only its small index arrays to the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from crystaltwins.data.cache import GraphCache
from crystaltwins.graph.batch import CrystalGraphBatch, GraphArrays

#: Arrays the encoder needs (a plain batch); the augmentations also need positions, lattices,
#: periodic images and the candidate edges.
MODEL_ARRAYS = ("atomic_numbers", "edge_src", "edge_dst", "edge_distance")


def ragged_rows(offsets: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ragged blocks ``offsets[k]:offsets[k + 1]`` for ``k`` in ``index``, in order.

    :param offsets: ``(N + 1,)`` int64 block boundaries.
    :param index: ``(B,)`` int64 block numbers (any order, repeats allowed).
    :returns: ``rows`` ``(sum of the block sizes,)`` int64 and ``counts`` ``(B,)`` int64.
    """
    starts = offsets[index]
    counts = offsets[index + 1] - starts
    first = np.zeros(len(index), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    rows = np.repeat(starts - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)
    return rows, counts


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


@dataclass(frozen=True)
class BatchIndex:
    """Host-side index arrays of one batch (see :meth:`GraphStore.index`).

    :param crystals: ``(B,)`` cache rows of the batch's crystals, in batch order.
    :param atom_rows: ``(A,)`` rows of the atom arrays.
    :param edge_rows: ``(E,)`` rows of the edge arrays.
    :param edge_shift: ``(E,)`` batch offset of each edge's crystal, added to its local indices.
    :param atom_crystal: ``(A,)`` batch position (0..B-1) of each atom's crystal.
    """

    crystals: np.ndarray
    atom_rows: np.ndarray
    edge_rows: np.ndarray
    edge_shift: np.ndarray
    atom_crystal: np.ndarray
    atom_counts: np.ndarray
    edge_counts: np.ndarray


class GraphStore:
    """The arrays of a graph cache that batches are made of, on the host or on one device.

    :param cache: an open :class:`~crystaltwins.data.cache.GraphCache`.
    :param values: optional ``(N,)`` or ``(N, T)`` per-crystal targets (e.g. transformed
        labels), indexed by cache row; ``batch.targets`` is gathered from it.

    On the host the arrays stay memory-mapped. :meth:`to` returns a store whose model arrays
    (and ``values``) are device tensors, copied once; its batches are made on that device.
    """

    def __init__(self, cache: GraphCache, values: np.ndarray | None = None) -> None:
        self.cache = cache
        self.atom_offsets = cache.array("atom_offsets")
        self.edge_offsets = cache.array("edge_offsets")
        self.cand_offsets = cache.array("cand_offsets")
        self.device: torch.device | None = None
        self._tensors: dict[str, Tensor] = {}
        if values is not None:
            values = np.asarray(values, dtype=np.float32)
            values = values[:, None] if values.ndim == 1 else values
        self.values = values
        self._values_tensor: Tensor | None = None

    def __len__(self) -> int:
        return len(self.cache)

    def nbytes(self, names: Sequence[str] = MODEL_ARRAYS) -> int:
        """Bytes the arrays ``names`` (and the targets) take, as stored."""
        total = sum(int(self.cache.array(n).nbytes) for n in names)
        return total + (0 if self.values is None else int(self.values.nbytes))

    def to(self, device: torch.device | str) -> GraphStore:
        """A store whose model arrays live on ``device`` (copied once; int64/float32)."""
        device = torch.device(device)
        store = GraphStore.__new__(GraphStore)
        store.__dict__.update(self.__dict__)
        store.device = device
        store._tensors = {
            "atomic_numbers": torch.from_numpy(
                np.array(self.cache.array("atomic_numbers"), dtype=np.int64)
            ).to(device),
            "edge_src": torch.from_numpy(np.array(self.cache.array("edge_src"))).to(device),
            "edge_dst": torch.from_numpy(np.array(self.cache.array("edge_dst"))).to(device),
            "edge_distance": torch.from_numpy(
                np.array(self.cache.array("edge_distance"), dtype=np.float32)
            ).to(device),
        }
        store._values_tensor = (
            None if self.values is None else torch.from_numpy(self.values).to(device)
        )
        return store

    def index(self, crystals: Sequence[int] | np.ndarray) -> BatchIndex:
        """The row ranges of ``crystals`` (cache rows), computed on the host."""
        crystals = np.asarray(crystals, dtype=np.int64)
        atom_rows, atom_counts = ragged_rows(self.atom_offsets, crystals)
        edge_rows, edge_counts = ragged_rows(self.edge_offsets, crystals)
        n = len(crystals)
        return BatchIndex(
            crystals=crystals,
            atom_rows=atom_rows,
            edge_rows=edge_rows,
            edge_shift=np.repeat(_exclusive_cumsum(atom_counts), edge_counts),
            atom_crystal=np.repeat(np.arange(n, dtype=np.int64), atom_counts),
            atom_counts=atom_counts,
            edge_counts=edge_counts,
        )

    def batch(
        self, crystals: Sequence[int] | np.ndarray, with_ids: bool = True
    ) -> CrystalGraphBatch:
        """The :class:`CrystalGraphBatch` of ``crystals`` (cache rows, in batch order).

        Equal, tensor for tensor, to :func:`~crystaltwins.data.dataset.collate_graphs` of the
        same crystals' graphs; on the store's device when it has one.
        """
        ix = self.index(crystals)
        if self.device is None:
            arr = self.cache.array
            src = arr("edge_src")[ix.edge_rows].astype(np.int64) + ix.edge_shift
            dst = arr("edge_dst")[ix.edge_rows].astype(np.int64) + ix.edge_shift
            batch = CrystalGraphBatch(
                atomic_numbers=torch.from_numpy(
                    arr("atomic_numbers")[ix.atom_rows].astype(np.int64)
                ),
                edge_index=torch.from_numpy(np.stack([src, dst])),
                edge_distance=torch.from_numpy(
                    arr("edge_distance")[ix.edge_rows].astype(np.float32)
                ),
                crystal_index=torch.from_numpy(ix.atom_crystal),
                num_crystals=len(ix.crystals),
                targets=None if self.values is None else torch.from_numpy(self.values[ix.crystals]),
            )
        else:
            t = self._tensors
            device = self.device

            def put(a: np.ndarray) -> Tensor:
                return torch.from_numpy(a).to(device, non_blocking=True)

            edge_rows, atom_rows, shift = put(ix.edge_rows), put(ix.atom_rows), put(ix.edge_shift)
            src = t["edge_src"][edge_rows].long() + shift
            dst = t["edge_dst"][edge_rows].long() + shift
            batch = CrystalGraphBatch(
                atomic_numbers=t["atomic_numbers"][atom_rows],
                edge_index=torch.stack([src, dst]),
                edge_distance=t["edge_distance"][edge_rows],
                crystal_index=put(ix.atom_crystal),
                num_crystals=len(ix.crystals),
                targets=None
                if self._values_tensor is None
                else self._values_tensor[put(ix.crystals)],
            )
        if with_ids:
            batch.ids = self.cache.ids[ix.crystals].tolist()
        return batch

    def graph_arrays(self, crystals: Sequence[int] | np.ndarray) -> GraphArrays:
        """The :class:`GraphArrays` (input of the batch augmentations) of ``crystals``.

        Equal to ``GraphArrays.from_graphs`` of the same crystals' graphs. Host only.
        """
        crystals = np.asarray(crystals, dtype=np.int64)
        arrays = gather_graph_arrays([self.cache], np.zeros(len(crystals), np.int64), crystals)
        if self.values is not None:
            arrays.targets = self.values[crystals]
        return arrays


def gather_graph_arrays(
    caches: Sequence[GraphCache], cache_of: np.ndarray, rows: np.ndarray
) -> GraphArrays:
    """:class:`GraphArrays` of crystals ``rows[k]`` of ``caches[cache_of[k]]``, in that order.

    Each cache's crystals are gathered with one vectorised read per array and written into
    their places in the batch, so a batch mixing several data sources costs a few array calls
    per source, not per crystal. Equal to ``GraphArrays.from_graphs`` of the same graphs.
    """
    cache_of = np.asarray(cache_of, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    present = np.unique(cache_of)
    counts = {kind: np.zeros(n, dtype=np.int64) for kind in ("atom", "edge", "cand")}
    for c in present:
        mask = cache_of == c
        for kind in counts:
            offsets = caches[c].array(f"{kind}_offsets")
            counts[kind][mask] = offsets[rows[mask] + 1] - offsets[rows[mask]]
    out_offsets = {}
    for kind, count in counts.items():
        out_offsets[kind] = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(count, out=out_offsets[kind][1:])
    totals = {kind: int(o[-1]) for kind, o in out_offsets.items()}
    atom_start = out_offsets["atom"][:-1]

    out: dict[str, np.ndarray] = {
        "atomic_numbers": np.empty(totals["atom"], np.int64),
        "positions": np.empty((totals["atom"], 3), np.float64),
        "lattices": np.empty((n, 3, 3), np.float64),
    }
    for kind in ("edge", "cand"):
        out[f"{kind}_src"] = np.empty(totals[kind], np.int64)
        out[f"{kind}_dst"] = np.empty(totals[kind], np.int64)
        out[f"{kind}_image"] = np.empty((totals[kind], 3), np.float64)
    out["edge_distance"] = np.empty(totals["edge"], np.float64)

    for c in present:
        cache = caches[c]
        where = np.flatnonzero(cache_of == c)
        local = rows[where]
        out["lattices"][where] = cache.array("lattices")[local]
        src_rows, _ = ragged_rows(cache.array("atom_offsets"), local)
        dst_rows, _ = ragged_rows(out_offsets["atom"], where)
        out["atomic_numbers"][dst_rows] = cache.array("atomic_numbers")[src_rows]
        out["positions"][dst_rows] = cache.array("positions")[src_rows]
        for kind in ("edge", "cand"):
            src_rows, kind_counts = ragged_rows(cache.array(f"{kind}_offsets"), local)
            dst_rows, _ = ragged_rows(out_offsets[kind], where)
            shift = np.repeat(atom_start[where], kind_counts)
            out[f"{kind}_src"][dst_rows] = cache.array(f"{kind}_src")[src_rows] + shift
            out[f"{kind}_dst"][dst_rows] = cache.array(f"{kind}_dst")[src_rows] + shift
            out[f"{kind}_image"][dst_rows] = cache.array(f"{kind}_image")[src_rows]
            if kind == "edge":
                out["edge_distance"][dst_rows] = cache.array("edge_distance")[src_rows]

    def cartesian(kind: str) -> np.ndarray:
        crystal = np.repeat(np.arange(n), counts[kind])
        return np.einsum("ei,eij->ej", out[f"{kind}_image"], out["lattices"][crystal])

    ids: list[str] = [""] * n
    for c in present:
        where = np.flatnonzero(cache_of == c)
        for k, value in zip(where.tolist(), caches[c].ids[rows[where]].tolist(), strict=True):
            ids[k] = value
    return GraphArrays(
        atomic_numbers=out["atomic_numbers"],
        positions=out["positions"],
        atom_crystal=np.repeat(np.arange(n, dtype=np.int64), counts["atom"]),
        edge_src=out["edge_src"],
        edge_dst=out["edge_dst"],
        edge_shift=cartesian("edge"),
        edge_distance=out["edge_distance"],
        cand_src=out["cand_src"],
        cand_dst=out["cand_dst"],
        cand_shift=cartesian("cand"),
        num_crystals=n,
        ids=ids,
    )


class ConcatGraphViews(torch.utils.data.Dataset):
    """Crystals ``positions`` of several caches, taken as one dataset, for the two-view
    pre-training loader: ``__getitems__`` of ``(i, epoch)`` keys returns the batch's
    :class:`GraphArrays` and its first key (what
    :class:`~crystaltwins.data.dataset.AugmentedPairCollator` seeds the views with).

    :param caches: the caches, concatenated in this order.
    :param positions: ``(M,)`` rows of the concatenation that make up this dataset.
    """

    def __init__(self, caches: Sequence[GraphCache], positions: np.ndarray) -> None:
        self.caches = list(caches)
        sizes = np.array([len(c) for c in self.caches], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.positions = np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def locate(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cache, row in that cache) of dataset items ``items``."""
        glob = self.positions[items]
        cache_of = np.searchsorted(self.starts, glob, side="right") - 1
        return cache_of, glob - self.starts[cache_of]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[GraphArrays, tuple[int, int]]:
        return self.__getitems__([key])

    def __getitems__(
        self, keys: Sequence[int | tuple[int, int]]
    ) -> tuple[GraphArrays, tuple[int, int]]:
        pairs = [(k, 0) if isinstance(k, (int, np.integer)) else k for k in keys]
        items = np.array([int(i) for i, _ in pairs], dtype=np.int64)
        cache_of, rows = self.locate(items)
        return gather_graph_arrays(self.caches, cache_of, rows), (int(items[0]), int(pairs[0][1]))


def resident_fits(store: GraphStore, device: torch.device, fraction: float = 0.5) -> bool:
    """Whether the model arrays of ``store`` may be copied to ``device``: on a CUDA device when
    they take at most ``fraction`` of its free memory; never on the CPU (the memory-mapped cache
    is read in place there)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    # int64 atomic numbers on the device: 8 bytes instead of 1.
    need = store.nbytes() + 7 * int(store.cache.array("atomic_numbers").shape[0])
    return need <= fraction * free
