"""Datasets over a graph cache, and collation of crystal graphs into batches."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from crystaltwins.data.cache import GraphCache
from crystaltwins.data.gather import GraphStore
from crystaltwins.graph.batch import CrystalGraphBatch, GraphArrays
from crystaltwins.graph.crystal_graph import CrystalGraph

if TYPE_CHECKING:
    from crystaltwins.transforms.base import BatchTransform


class CrystalGraphDataset(Dataset):
    """Crystal graphs from a cache, optionally restricted to ``indices``.

    :param cache: a :class:`GraphCache` or its directory.
    :param indices: rows of the cache to use (a split); all when ``None``.
    :param targets: label columns that :class:`GraphCollator` puts into ``batch.targets``.
    """

    def __init__(
        self,
        cache: GraphCache | str | os.PathLike,
        indices: Sequence[int] | np.ndarray | None = None,
        targets: Sequence[str] | None = None,
    ) -> None:
        self.cache = cache if isinstance(cache, GraphCache) else GraphCache(cache)
        self.indices = (
            np.arange(len(self.cache)) if indices is None else np.asarray(indices, dtype=np.int64)
        )
        self.targets = list(targets or [])
        missing = [t for t in self.targets if t not in self.cache.label_names]
        if missing:
            raise KeyError(
                f"{self.cache.cache_dir}: no label column {missing}; available: {self.cache.label_names}"
            )

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> CrystalGraph:
        return self.cache.graph(int(self.indices[i]))

    def target_values(self) -> np.ndarray | None:
        """``(N_cache, T)`` values of :attr:`targets` by cache row (``None`` without targets)."""
        return self.cache.labels(self.targets) if self.targets else None

    @property
    def store(self) -> GraphStore:
        """The :class:`GraphStore` batches are gathered from (host, memory-mapped, by default;
        see :meth:`to_device`)."""
        store = self.__dict__.get("_store")
        if store is None:
            store = self._store = GraphStore(self.cache, self.target_values())
        return store

    def to_device(self, device: torch.device | str) -> CrystalGraphDataset:
        """The same dataset with its batches gathered on ``device`` from arrays copied there
        once (see :func:`~crystaltwins.data.gather.resident_fits` for when that pays)."""
        moved = copy.copy(self)
        moved._store = self.store.to(device)
        return moved

    def __getitems__(self, positions: Sequence[int]) -> CrystalGraphBatch:
        """A whole batch at once, by array arithmetic (what ``DataLoader`` calls; pass the
        result through :class:`GraphCollator`)."""
        return self.store.batch(self.indices[np.asarray(positions, dtype=np.int64)])

    def subset(self, indices: Sequence[int] | np.ndarray) -> CrystalGraphDataset:
        """The dataset restricted to positions ``indices`` of this one."""
        subset = copy.copy(self)
        subset.indices = self.indices[np.asarray(indices, dtype=np.int64)]
        return subset


class TwoViewDataset(Dataset):
    """Two independently augmented views of every crystal (for self-supervised pre-training).

    Views are reproducible whatever the worker or a resume: item ``(i, epoch)`` draws from
    ``np.random.default_rng([seed, epoch, i])`` (a plain ``i`` means epoch 0). Use it with
    :class:`~crystaltwins.training.sampling.EpochSampler`, which yields such keys.
    """

    def __init__(self, dataset: Dataset, transform: BatchTransform, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[CrystalGraph, CrystalGraph]:
        i, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        graph = self.dataset[i]
        rng = np.random.default_rng([self.seed, epoch, int(i)])
        return self.transform(graph, rng), self.transform(graph, rng)


def collate_graphs(
    graphs: Sequence[CrystalGraph], targets: Sequence[str] = ()
) -> CrystalGraphBatch:
    """Stack crystal graphs into one :class:`CrystalGraphBatch` (indices made global)."""
    atom_counts = np.fromiter((g.atomic_numbers.shape[0] for g in graphs), np.int64, len(graphs))
    edge_counts = np.fromiter((g.edges.src.shape[0] for g in graphs), np.int64, len(graphs))
    atom_offsets = np.zeros(len(graphs), dtype=np.int64)
    np.cumsum(atom_counts[:-1], out=atom_offsets[1:])
    shift = np.repeat(atom_offsets, edge_counts)
    src = np.concatenate([g.edges.src for g in graphs]).astype(np.int64) + shift
    dst = np.concatenate([g.edges.dst for g in graphs]).astype(np.int64) + shift
    batch_targets = None
    if targets:
        values = np.array(
            [[g.labels.get(t, np.nan) for t in targets] for g in graphs], dtype=np.float32
        )
        batch_targets = torch.from_numpy(values)
    return CrystalGraphBatch(
        atomic_numbers=torch.from_numpy(
            np.concatenate([g.atomic_numbers for g in graphs]).astype(np.int64)
        ),
        edge_index=torch.from_numpy(np.stack([src, dst])),
        edge_distance=torch.from_numpy(
            np.concatenate([g.edges.distance for g in graphs]).astype(np.float32)
        ),
        crystal_index=torch.from_numpy(
            np.repeat(np.arange(len(graphs), dtype=np.int64), atom_counts)
        ),
        num_crystals=len(graphs),
        targets=batch_targets,
        ids=[g.id for g in graphs],
    )


class GraphCollator:
    """``collate_fn`` for a :class:`CrystalGraphDataset` (picklable for worker processes)."""

    def __init__(self, targets: Sequence[str] = ()) -> None:
        self.targets = list(targets)

    def __call__(self, graphs: Sequence[CrystalGraph] | CrystalGraphBatch) -> CrystalGraphBatch:
        if isinstance(graphs, CrystalGraphBatch):  # made whole by ``__getitems__``
            return graphs
        return collate_graphs(graphs, self.targets)


class AugmentedPairCollator:
    """``collate_fn`` making two augmented views of a whole batch at once (vectorised).

    Takes the plain graphs of a batch (``dataset[i]`` for keys ``(i, epoch)``: use it with a
    dataset that returns ``(graph, key)``, see :class:`KeyedDataset`) and returns
    ``(batch_a, batch_b)``. The random generator of a batch is seeded by
    ``(seed, epoch, first index)``, so runs are reproducible and resumable.
    """

    def __init__(self, transform: Any, seed: int = 0) -> None:
        self.transform = transform
        self.seed = seed

    def __call__(
        self,
        items: Sequence[tuple[CrystalGraph, tuple[int, int]]] | tuple[GraphArrays, tuple[int, int]],
    ) -> tuple[Any, Any]:
        if isinstance(items, tuple) and isinstance(items[0], GraphArrays):
            arrays, (first, epoch) = items  # gathered whole (ConcatGraphViews.__getitems__)
        else:
            first, epoch = items[0][1]
            arrays = GraphArrays.from_graphs([g for g, _ in items])
        rng = np.random.default_rng([self.seed, epoch, first, arrays.num_crystals])
        return self.transform.batch(arrays, rng).to_batch(), self.transform.batch(
            arrays, rng
        ).to_batch()


class KeyedDataset(Dataset):
    """Returns ``(dataset[i], (i, epoch))`` for keys ``(i, epoch)`` (see :class:`AugmentedPairCollator`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[CrystalGraph, tuple[int, int]]:
        i, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        return self.dataset[i], (int(i), int(epoch))


class ViewPairCollator:
    """``collate_fn`` for a :class:`TwoViewDataset`: returns ``(batch_a, batch_b)``."""

    def __call__(self, pairs: Sequence[tuple[CrystalGraph, CrystalGraph]]) -> tuple[Any, Any]:
        return collate_graphs([a for a, _ in pairs]), collate_graphs([b for _, b in pairs])
