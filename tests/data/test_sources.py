"""Data sources: a prebuilt graph cache folder used as a source."""

from __future__ import annotations

import numpy as np
import pytest

from crystaltwins.data.cache import build_graph_cache
from crystaltwins.data.sources import prepare_caches
from crystaltwins.graph.atom_features import AtomFeaturizer, default_featurizer
from crystaltwins.graph.settings import GraphSettings


def test_a_featurized_folder_is_used_as_it_is(data_dir, reference_dir, tmp_path):
    source = data_dir / "samples" / "jarvis_poscar"
    built = tmp_path / "prebuilt"
    build_graph_cache(source, built, GraphSettings(), featurizer=default_featurizer(None))
    logged: list[str] = []
    published = AtomFeaturizer.from_json(reference_dir / "atom_init.json")
    (cache,) = prepare_caches(
        [built], GraphSettings(), published, cache_root=tmp_path / "root", log=logged.append
    )
    assert cache.cache_dir == built and len(cache) == 70
    assert logged == [f"{built}: 70 crystals (graph cache), 0 skipped"]
    assert not (tmp_path / "root").exists()  # nothing rebuilt
    (direct,) = prepare_caches([source], GraphSettings(), published, tmp_path / "root", log=None)
    np.testing.assert_array_equal(cache.array("edge_distance"), direct.array("edge_distance"))

    with pytest.raises(ValueError, match="graph cache built with settings"):
        prepare_caches([built], GraphSettings(max_neighbors=8), published, log=None)

    class NoOxygen(AtomFeaturizer):
        def supports(self, z: int) -> bool:
            return z != 8 and super().supports(z)

    no_oxygen = NoOxygen(published.table, name="no-oxygen")
    with pytest.raises(ValueError, match=r"elements \[8\] .* 'no-oxygen'"):
        prepare_caches([built], GraphSettings(), no_oxygen, log=None)


def test_element_tables_of_one_coverage_share_a_cache(data_dir, reference_dir, tmp_path):
    """The cache holds atomic numbers, not features: the built-in table and the published
    ``atom_init.json`` (other numbers, the same elements) reuse one cache; a table covering fewer
    elements gets its own, without the crystals it cannot encode."""
    source = data_dir / "samples" / "jarvis_poscar"
    builtin = AtomFeaturizer.builtin()
    published = AtomFeaturizer.from_json(reference_dir / "atom_init.json")
    assert builtin.fingerprint() != published.fingerprint()
    logged: list[str] = []
    root = tmp_path / "root"
    (first,) = prepare_caches([source], GraphSettings(), builtin, root, log=logged.append)
    (second,) = prepare_caches([source], GraphSettings(), published, root, log=logged.append)
    assert second.cache_dir == first.cache_dir
    assert "built in" in logged[0] and "(reused)" in logged[1]
    assert first.manifest["key"]["featurizer"] == {"supported_elements": "1-100"}

    z = first.array("atomic_numbers")
    absent = int(np.bincount(z[z > 0]).argmax())  # the most common element of the samples

    class Without(AtomFeaturizer):
        def supports(self, element: int) -> bool:
            return element != absent and super().supports(element)

    (narrow,) = prepare_caches(
        [source], GraphSettings(), Without(builtin.table, name="without"), root, log=None
    )
    assert narrow.cache_dir != first.cache_dir
    assert 0 < len(narrow) < len(first)
    assert absent not in set(narrow.array("atomic_numbers").tolist())
    expected = f"1-{absent - 1},{absent + 1}-100" if 1 < absent < 100 else None
    if expected:
        assert narrow.manifest["key"]["featurizer"] == {"supported_elements": expected}


def test_a_data_folder_with_a_manifest_of_its_own_is_read_as_data(data_dir, tmp_path):
    """Only a graph cache's manifest makes a folder a cache (it was refused as an old cache)."""
    import json
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(data_dir / "samples" / "cgcnn_regression", folder)
    (folder / "manifest.json").write_text(json.dumps({"dataset": "mine", "version": 2}))
    (cache,) = prepare_caches([folder], GraphSettings(), cache_root=tmp_path / "root", log=None)
    assert len(cache) == 10 and cache.cache_dir.parent == tmp_path / "root"
