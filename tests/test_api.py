"""The package's top level: ``import crystaltwins as ct`` and ``python -m crystaltwins``."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

import crystaltwins as ct


def test_top_level_functions_are_the_api() -> None:
    from crystaltwins import api

    for name in ("featurize", "pretrain", "finetune", "predict", "embed", "load_model"):
        assert getattr(ct, name) is getattr(api, name)
        assert name in dir(ct)
    with pytest.raises(AttributeError):
        ct.no_such_function  # noqa: B018


def test_subpackages_export_the_data_flow() -> None:
    """The README's module table: each step's names import from its package."""
    from crystaltwins.data import GraphCache, build_graph_cache, collate_graphs  # noqa: F401
    from crystaltwins.graph import AtomFeaturizer, GraphSettings, build_crystal_graph  # noqa: F401
    from crystaltwins.io import (  # noqa: F401
        iter_entries,
        parse_entry,
        read_records,
        records_from_structures,  # noqa: F401
    )


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crystaltwins", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"crystaltwins {ct.__version__}"


#: A one-epoch fine-tuning on 100 crystals: enough to have a model.
TINY_RUN = dict(
    from_scratch=True, epochs=1, max_train=100, max_eval=50, progress=False, plots=False
)


def test_finetune_and_featurize_from_keywords(perovskite_subset, tmp_path) -> None:
    summary = ct.featurize(perovskite_subset, tmp_path / "cache")
    assert summary.crystals == 1500
    metrics = ct.finetune(tmp_path / "cache", "e_form", tmp_path / "run", **TINY_RUN)
    assert metrics["crystals"]["train"] == 100 and metrics["test"]["mae"] > 0
    with pytest.raises(ValueError, match="needs data, target and out"):
        ct.finetune(perovskite_subset, "e_form")
    bundle = ct.load_model(tmp_path / "run")
    assert bundle.kind == "finetuned"


def test_a_wrong_target_is_refused_before_any_graph_is_built(perovskite_subset, tmp_path):
    """A typo in the target column costs no featurization and leaves no folder behind."""
    with pytest.raises(ValueError, match="unknown target column.*'eform'.*available columns"):
        ct.finetune(perovskite_subset, "eform", tmp_path / "a" / "run", from_scratch=True,
                    cache_root=tmp_path / "cache")  # fmt: skip
    with pytest.raises(ValueError, match="unknown target column.*'gap'"):
        ct.finetune(perovskite_subset, "e_form", tmp_path / "a" / "run", from_scratch=True,
                    aux_targets=["gap"], cache_root=tmp_path / "cache")  # fmt: skip
    assert not (tmp_path / "cache").exists() and not (tmp_path / "a").exists()


def test_predict_and_embed_take_crystals_built_in_python(perovskite_subset, tmp_path, monkeypatch):
    """Structures, Atoms, lists and DataFrames predict as their file does, leaving no cache."""
    import pandas as pd
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystaltwins.io import read_records

    monkeypatch.setenv("CRYSTALTWINS_CACHE", str(tmp_path / "cache_root"))
    train_cache = str(tmp_path / "train_cache")
    ct.finetune(perovskite_subset, "e_form", tmp_path / "run", cache_root=train_cache, **TINY_RUN)
    records = list(itertools.islice(read_records(perovskite_subset), 5))
    structures = [r.structure for r in records]
    from_file = ct.predict(tmp_path / "run", perovskite_subset, cache_root=tmp_path / "c")
    expected = from_file.values[:5]
    one = ct.predict(tmp_path / "run", structures[0])
    assert one.values.shape == (1,) and one.values[0] == pytest.approx(expected[0], rel=1e-5)
    many = ct.predict(tmp_path / "run", structures)
    np.testing.assert_allclose(many.values, expected, rtol=1e-5)
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    np.testing.assert_allclose(ct.predict(tmp_path / "run", atoms).values, expected, rtol=1e-5)
    frame = pd.DataFrame(
        {"id": [r.id for r in records], "structure": structures, "e_form": [1.0] * 5}
    )
    result = ct.predict(tmp_path / "run", frame)
    np.testing.assert_allclose(result.values, expected, rtol=1e-5)
    assert list(result.ids) == [r.id for r in records]
    assert result.labels["e_form"].tolist() == [1.0] * 5
    assert ct.embed(tmp_path / "run", structures).values.shape[0] == 5
    left = tmp_path / "cache_root"  # nothing left behind (but the compiled CPU kernels)
    assert not left.exists() or [p.name for p in left.iterdir()] == ["kernels"]
    with pytest.raises(ValueError, match="expected a path"):
        ct.predict(tmp_path / "run", [1, 2])
    # One bad crystal among good ones is skipped and named by its list position, not a failure.
    from ase import Atoms

    molecule = Atoms("CO", positions=[[0, 0, 0], [1.1, 0, 0]])  # no cell
    disordered = structures[1].copy()
    disordered.replace_species({disordered[0].specie: {disordered[0].specie: 0.5, "Ba": 0.5}})
    mixed = ct.predict(tmp_path / "run", [structures[0], molecule, disordered, structures[2]])
    assert list(mixed.ids) == ["0", "3"]
    np.testing.assert_allclose(mixed.values, expected[[0, 2]], rtol=1e-5)
    assert [(bad.id, bad.source) for bad in mixed.skipped] == [("1", "item 1"), ("2", "item 2")]
    assert "no periodic cell" in mixed.skipped[0].reason
    with pytest.raises(ValueError, match="none of the 1 crystals could be used; the first: item 0"):
        ct.predict(tmp_path / "run", [molecule])
    with pytest.raises(ValueError, match="no crystals given"):
        ct.predict(tmp_path / "run", [])


def test_crystal_graph_from_the_package(data_dir, tmp_path):
    """``ct.crystal_graph`` stays the function after the subpackages are imported (``ct.graph``
    is the ``crystaltwins.graph`` package)."""
    folder = data_dir / "samples" / "cgcnn_regression"
    ct.featurize(folder, tmp_path / "cache", workers=1)  # imports crystaltwins.graph.*
    for _ in range(2):
        graph, count = ct.crystal_graph(folder, "9012304", max_neighbors=4)
        assert (graph.id, count) == ("9012304", 10)
        assert graph.num_edges == 4 * graph.num_atoms
