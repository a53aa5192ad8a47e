"""Batches gathered by array arithmetic equal the per-crystal collation, tensor for tensor."""

from __future__ import annotations

import csv
import gzip
import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.data.dataset import CrystalGraphDataset, GraphCollator, collate_graphs
from crystaltwins.data.gather import GraphStore, ragged_rows
from crystaltwins.graph.batch import GraphArrays


def test_ragged_rows_in_request_order_with_repeats() -> None:
    offsets = np.array([0, 2, 2, 5, 6])
    rows, counts = ragged_rows(offsets, np.array([3, 0, 2, 2, 1]))
    assert rows.tolist() == [5, 0, 1, 2, 3, 4, 2, 3, 4]
    assert counts.tolist() == [1, 2, 3, 3, 0]


@pytest.fixture(scope="module")
def hoip_cache(data_dir, tmp_path_factory) -> GraphCache:
    """200 real hybrid perovskites (~48 atoms each) plus 1 to 5-atom crystals: varied sizes."""
    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("gather") / "mixed.csv.gz"
    with gzip.open(path, "wt", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["id", "cif", "y"])
        for name, column, n in (("hoip", "band_gap", 200), ("perovskites", "e_form", 300)):
            with gzip.open(data_dir / f"{name}.csv.gz", "rt", newline="") as src:
                for row in itertools.islice(csv.DictReader(src), n):
                    writer.writerow([f"{name}-{row['id']}", row["cif"], row[column]])
    out = tmp_path_factory.mktemp("gather_cache") / "cache"
    build_graph_cache(path, out, progress=False)
    return GraphCache(out)


def _assert_same_batch(a, b) -> None:
    for name in ("atomic_numbers", "edge_index", "edge_distance", "crystal_index", "targets"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            assert torch.equal(x.cpu(), y.cpu()), name
    assert a.num_crystals == b.num_crystals
    assert a.ids == b.ids


def test_store_batch_equals_collate(hoip_cache: GraphCache) -> None:
    rng = np.random.default_rng(0)
    store = GraphStore(hoip_cache, hoip_cache.labels(["y"]))
    on_device = store.to("cpu")  # the device path, exercised on the CPU
    for size in (1, 7, 128):
        crystals = rng.choice(len(hoip_cache), size, replace=True)
        expected = collate_graphs([hoip_cache.graph(int(i)) for i in crystals], ["y"])
        _assert_same_batch(store.batch(crystals), expected)
        _assert_same_batch(on_device.batch(crystals), expected)


def test_store_graph_arrays_equal_from_graphs(hoip_cache: GraphCache) -> None:
    crystals = np.random.default_rng(1).permutation(len(hoip_cache))[:64]
    got = GraphStore(hoip_cache).graph_arrays(crystals)
    expected = GraphArrays.from_graphs([hoip_cache.graph(int(i)) for i in crystals])
    for name, value in vars(expected).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(got, name), value, err_msg=name)
            assert getattr(got, name).dtype == value.dtype, name
    assert got.ids == expected.ids and got.num_crystals == expected.num_crystals


def test_dataloader_uses_whole_batch_gather(hoip_cache: GraphCache) -> None:
    dataset = CrystalGraphDataset(hoip_cache, np.arange(10, 400), targets=["y"])
    subset = dataset.subset(np.arange(0, 390, 3))
    loader = DataLoader(subset, batch_size=32, shuffle=False, collate_fn=GraphCollator(["y"]))
    batches = list(loader)
    assert sum(b.num_crystals for b in batches) == len(subset)
    graphs = [subset[i] for i in range(32)]
    _assert_same_batch(batches[0], collate_graphs(graphs, ["y"]))
    moved = subset.to_device("cpu")
    _assert_same_batch(moved.__getitems__(list(range(32))), batches[0])


def test_views_of_several_caches_equal_per_crystal_collation(
    hoip_cache, data_dir, tmp_path
) -> None:
    """Pre-training batches mixing two caches give the same views as per-crystal collation."""
    from torch.utils.data import ConcatDataset, Subset

    from crystaltwins.data.dataset import AugmentedPairCollator, KeyedDataset
    from crystaltwins.data.gather import ConcatGraphViews
    from crystaltwins.transforms import build_augmentation

    small = tmp_path / "small"
    build_graph_cache(data_dir / "samples" / "cgcnn_regression", small, progress=False)
    caches = [hoip_cache, GraphCache(small)]
    positions = np.random.default_rng(3).permutation(len(caches[0]) + len(caches[1]))[:300]
    old = KeyedDataset(Subset(ConcatDataset([CrystalGraphDataset(c) for c in caches]), positions))
    new = ConcatGraphViews(caches, positions)
    collate = AugmentedPairCollator(build_augmentation("rp,am,em"), seed=5)
    for keys in ([(0, 2), (1, 2), (299, 2)], [(k, 1) for k in range(20, 84)]):
        expected = collate([old[k] for k in keys])
        got = collate(new.__getitems__(keys))
        for a, b in zip(got, expected, strict=True):
            _assert_same_batch(a, b)
