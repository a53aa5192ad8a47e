"""The graph cache: exact graphs, reuse, rebuilds, resumable builds, bad crystals, loading."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

import crystaltwins.data.cache as cache_module
from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.data.dataset import CrystalGraphDataset, GraphCollator, collate_graphs
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.crystal_graph import build_crystal_graph
from crystaltwins.graph.settings import GraphSettings
from tests.helpers import read_cifs

csv.field_size_limit(2**31 - 1)


def write_csv(path, rows, header=("id", "cif", "e_form")):
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def perovskite_rows(data_dir):
    return [
        (i, cif, str(0.1 * k))
        for k, (i, cif) in enumerate(read_cifs(data_dir / "perovskites.csv.gz", 120))
    ]


@pytest.fixture
def source(tmp_path, perovskite_rows):
    return write_csv(tmp_path / "perov.csv.gz", perovskite_rows)


def test_cached_graphs_equal_direct_build(source, tmp_path, perovskite_rows):
    summary = build_graph_cache(
        source, tmp_path / "cache", workers=2, chunk_size=32, progress=False
    )
    assert summary.crystals == 120 and not summary.skipped and not summary.reused
    cache = GraphCache(tmp_path / "cache")
    assert len(cache) == 120
    assert list(cache.ids[:3]) == [r[0] for r in perovskite_rows[:3]]  # source order kept
    for k in (0, 57, 119):
        structure = Structure.from_str(perovskite_rows[k][1], fmt="cif")
        direct = build_crystal_graph(structure)
        cached = cache.graph(k)
        np.testing.assert_array_equal(cached.atomic_numbers, direct.atomic_numbers)
        np.testing.assert_allclose(cached.positions, direct.positions, atol=1e-10)
        np.testing.assert_array_equal(cached.edges.src, direct.edges.src)
        np.testing.assert_array_equal(cached.edges.dst, direct.edges.dst)
        np.testing.assert_array_equal(cached.edges.image, direct.edges.image)
        np.testing.assert_allclose(cached.edges.distance, direct.edges.distance, atol=1e-6)
        assert len(cached.candidates) == len(direct.candidates)
        assert cached.labels["e_form"] == pytest.approx(float(perovskite_rows[k][2]))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["version"] == cache_module.CACHE_VERSION
    assert manifest["crystals"] == 120 and manifest["edges"] == summary.edges


def test_cache_is_reused_and_rebuilt_when_settings_or_source_change(
    source, tmp_path, perovskite_rows
):
    build_graph_cache(source, tmp_path / "cache", progress=False)
    again = build_graph_cache(source, tmp_path / "cache", progress=False)
    assert again.reused
    changed = build_graph_cache(
        source, tmp_path / "cache", GraphSettings(max_neighbors=8), progress=False
    )
    assert not changed.reused and changed.edges == 8 * changed.atoms
    write_csv(source, perovskite_rows[:50])  # the source file changes
    rebuilt = build_graph_cache(
        source, tmp_path / "cache", GraphSettings(max_neighbors=8), progress=False
    )
    assert not rebuilt.reused and rebuilt.crystals == 50
    assert rebuilt.replaced and "earlier graph cache of this data" in rebuilt.replaced
    assert again.replaced is None
    other = write_csv(tmp_path / "other.csv.gz", perovskite_rows[:20])
    replaced = build_graph_cache(other, tmp_path / "cache", progress=False)
    assert f"replaced: the graph cache of {source.resolve()}" in replaced.lines()


def test_interrupted_build_leaves_no_cache_and_resumes(source, tmp_path, monkeypatch):
    written = []
    original = cache_module._write_chunk

    def failing_write(partial, index, chunk):
        if len(written) == 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the third chunk
        written.append(index)
        original(partial, index, chunk)

    monkeypatch.setattr(cache_module, "_write_chunk", failing_write)
    with pytest.raises(KeyboardInterrupt):
        build_graph_cache(source, tmp_path / "cache", chunk_size=20, progress=False)
    assert not (tmp_path / "cache" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError):
        GraphCache(tmp_path / "cache")

    built = []
    original_build = cache_module._build_chunk

    def counting_build(job):
        built.append(len(job[0]))
        return original_build(job)

    monkeypatch.setattr(cache_module, "_write_chunk", original)
    monkeypatch.setattr(cache_module, "_build_chunk", counting_build)
    resumed = build_graph_cache(source, tmp_path / "cache", chunk_size=20, progress=False)
    assert sum(built) == 120 - 40  # the two finished chunks were not built again
    fresh = build_graph_cache(source, tmp_path / "fresh", chunk_size=20, progress=False)
    assert resumed.crystals == fresh.crystals == 120
    for name in ("edge_dst", "edge_distance", "positions"):
        np.testing.assert_array_equal(
            GraphCache(tmp_path / "cache").array(name), GraphCache(tmp_path / "fresh").array(name)
        )


def _dies_on_chunk_1(partial, index, job):
    """A worker that dies (as the out-of-memory killer would stop it) on chunk 1."""
    import os

    if index == 1:
        os._exit(1)
    return _ORIGINAL_BUILD_AND_WRITE(partial, index, job)


_ORIGINAL_BUILD_AND_WRITE = cache_module._build_and_write_chunk


def test_a_worker_that_dies_stops_the_build_in_one_line_and_it_resumes(
    source, tmp_path, monkeypatch
):
    """It hung forever before, holding the cache's lock."""
    monkeypatch.setattr(cache_module, "_build_and_write_chunk", _dies_on_chunk_1)
    with pytest.raises(ValueError, match="a process building graphs stopped abruptly"):
        build_graph_cache(source, tmp_path / "cache", workers=2, chunk_size=20, progress=False)
    assert not (tmp_path / "cache" / "manifest.json").exists()
    monkeypatch.setattr(cache_module, "_build_and_write_chunk", _ORIGINAL_BUILD_AND_WRITE)
    resumed = build_graph_cache(
        source, tmp_path / "cache", workers=2, chunk_size=20, progress=False
    )
    assert resumed.crystals == 120 and not resumed.reused
    assert GraphCache(tmp_path / "cache").manifest["build_seconds"] > 0


def test_a_text_column_whose_name_is_no_file_name(tmp_path, perovskite_rows):
    """A metadata column named ``space group/symbol`` failed every build (``meta_<name>.npy``)."""
    rows = [(*row, "P4/mmm") for row in perovskite_rows[:10]]
    source = write_csv(
        tmp_path / "sg.csv.gz", rows, header=("id", "cif", "e_form", "space group/symbol")
    )
    build_graph_cache(source, tmp_path / "cache", progress=False)
    cache = GraphCache(tmp_path / "cache")
    assert list(cache.metadata("space group/symbol")) == ["P4/mmm"] * 10
    assert cache_module.metadata_file("formula") == "meta_formula.npy"  # plain names as before


def test_a_build_resumed_with_another_chunk_size_keeps_every_crystal(source, tmp_path, monkeypatch):
    """Finished chunks are numbered by position: resumed with another chunk size they would
    stand for other crystals, so the unfinished build starts again instead."""
    original = cache_module._write_chunk
    written = []

    def failing_write(partial, index, chunk):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(index)
        original(partial, index, chunk)

    monkeypatch.setattr(cache_module, "_write_chunk", failing_write)
    with pytest.raises(KeyboardInterrupt):
        build_graph_cache(source, tmp_path / "cache", chunk_size=30, progress=False)
    monkeypatch.setattr(cache_module, "_write_chunk", original)
    resumed = build_graph_cache(source, tmp_path / "cache", chunk_size=40, progress=False)
    fresh = build_graph_cache(source, tmp_path / "fresh", progress=False)
    assert resumed.crystals == fresh.crystals == 120
    np.testing.assert_array_equal(
        GraphCache(tmp_path / "cache").ids, GraphCache(tmp_path / "fresh").ids
    )


def test_bad_crystals_are_skipped_and_listed(tmp_path, perovskite_rows, reference_dir):
    good = perovskite_rows[:5]
    isolated = Structure(Lattice.cubic(12.0), ["Cu"], [[0, 0, 0]]).to(fmt="cif")
    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]).to(fmt="cif")
    rows = [
        *good,
        ("garbage", "this is not a CIF", "1.0"),
        ("isolated", isolated, "1.0"),
        ("disordered", disordered, "1.0"),
        ("no_label", good[0][1], ""),
        ("text_label", good[0][1], "abc"),
    ]
    source = write_csv(tmp_path / "bad.csv.gz", rows)
    # Element features for all but Cs.
    table = json.loads((reference_dir / "atom_init.json").read_text())
    featurizer_file = tmp_path / "atom_init.json"
    featurizer_file.write_text(json.dumps({k: v for k, v in table.items() if k != "55"}))
    featurizer = AtomFeaturizer.from_json(featurizer_file)
    has_cs = [r[0] for r in good if "Cs" in Structure.from_str(r[1], fmt="cif").composition]
    summary = build_graph_cache(
        source,
        tmp_path / "cache",
        featurizer=featurizer,
        targets=["e_form"],
        workers=2,
        chunk_size=3,
        progress=False,
    )
    reasons = {bad.id: bad.reason for bad in summary.skipped}
    assert set(reasons) >= {"garbage", "isolated", "disordered", "no_label", "text_label", *has_cs}
    assert "neighbour within 8" in reasons["isolated"]
    assert (
        "partial occupanc" in reasons["disordered"].lower()
        or "disorder" in reasons["disordered"].lower()
    )
    assert "e_form" in reasons["no_label"] and "e_form" in reasons["text_label"]
    for cs in has_cs:
        assert "Cs" in reasons[cs]
    assert summary.crystals == len(good) - len(has_cs)
    with open(tmp_path / "cache" / "skipped.csv", newline="") as handle:
        listed = list(csv.DictReader(handle))
    assert {r["id"] for r in listed} == set(reasons)
    assert all("bad.csv.gz" in r["source"] for r in listed)  # every entry names its file
    assert "skipped: " in "\n".join(summary.lines())


def test_dataset_batches_and_worker_loading(source, tmp_path):
    build_graph_cache(source, tmp_path / "cache", progress=False)
    dataset = CrystalGraphDataset(tmp_path / "cache", targets=["e_form"])
    graphs = [dataset[i] for i in range(4)]
    batch = collate_graphs(graphs, ["e_form"])
    assert batch.num_crystals == 4 and batch.num_atoms == sum(g.num_atoms for g in graphs)
    assert batch.edge_index.shape == (2, sum(len(g.edges) for g in graphs))
    # Edges stay within their crystal.
    assert torch.equal(
        batch.crystal_index[batch.edge_index[0]], batch.crystal_index[batch.edge_index[1]]
    )
    np.testing.assert_allclose(batch.targets[:, 0].numpy(), [g.labels["e_form"] for g in graphs])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=16, num_workers=2, collate_fn=GraphCollator(["e_form"])
    )
    ids = [i for b in loader for i in b.ids]
    assert ids == list(dataset.cache.ids)
    with pytest.raises(KeyError, match="no label column"):
        CrystalGraphDataset(tmp_path / "cache", targets=["band_gap"])
