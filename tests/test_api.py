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


def test_a_loaded_model_as_the_start_of_finetune_is_refused_in_one_line(
    perovskite_subset, tmp_path
):
    """``pretrained=ct.load_model(...)``: one line saying to save it first, not an OSError
    printing the whole model as a file name; nothing written."""
    from crystaltwins.models.checkpoint import save_model

    bundle = ct.load_model("default")
    with pytest.raises(
        ValueError, match=r"^pretrained takes a model file.*not a ModelBundle: save"
    ):
        ct.finetune(perovskite_subset, "e_form", tmp_path / "run", pretrained=bundle)
    assert not (tmp_path / "run").exists()
    assert save_model(tmp_path / "start.pt", bundle).is_file()  # what the message says works


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
    with pytest.warns(UserWarning) as caught:  # the result is shorter than the input: said
        mixed = ct.predict(tmp_path / "run", [structures[0], molecule, disordered, structures[2]])
    (warned,) = [str(w.message) for w in caught if "could not be used" in str(w.message)]
    assert warned.startswith("2 of 4 crystals could not be used and are not in the result")
    assert "the first: 1: " in warned and "no periodic cell" in warned
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


def test_crystal_graph_of_crystals_built_in_python(data_dir):
    """A Structure, an ASE Atoms or a list of them: the same graph as from their file."""
    from ase.io import read as ase_read
    from pymatgen.core import Lattice, Structure

    cif = sorted((data_dir / "samples" / "cgcnn_regression").glob("*.cif"))[0]
    from_file, _ = ct.crystal_graph(cif)
    structure = Structure.from_file(cif)
    for given in (structure, ase_read(cif)):
        graph, count = ct.crystal_graph(given)
        assert count == 1 and graph.num_edges == from_file.num_edges
        np.testing.assert_allclose(graph.edges.distance, from_file.edges.distance, atol=1e-5)
    lonely = Structure(Lattice.cubic(30.0), ["Na"], [[0, 0, 0]])  # skipped when graphs are built
    graph, count = ct.crystal_graph([structure, structure], "1")
    assert (graph.id, count) == ("1", 2)
    with pytest.raises(ValueError, match="^the given crystals: no crystal with the id 'x'$"):
        ct.crystal_graph([structure], "x")
    with pytest.raises(ValueError, match=r"^item 0: not a crystal: a int$"):
        ct.crystal_graph([3, structure])
    assert ct.crystal_graph([structure, 3])[0].id == "0"  # a bad later one is not asked for
    with pytest.raises(ValueError, match=r"^item 1: no atom has a neighbour within 8.0 Å$"):
        ct.crystal_graph([structure, lonely], "1")
