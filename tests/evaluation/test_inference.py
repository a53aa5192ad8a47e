"""Predictions and embeddings for new crystals: batch independence, bad input, file outputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from crystaltwins.evaluation.inference import (
    embed,
    predict,
    write_embeddings_npz,
    write_predictions_csv,
)
from crystaltwins.evaluation.runs import finetune
from crystaltwins.training.finetune import FinetuneConfig


@pytest.fixture(scope="module")
def model(perovskite_subset, cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    finetune(
        FinetuneConfig(
            data=str(perovskite_subset),
            target="e_form",
            out=str(out),
            from_scratch=True,
            epochs=2,
            max_train=300,
            cache_root=str(cache_root),
            progress=False,
            accelerator="cpu",
            devices="1",
            plots=False,
        )
    )
    return out / "model.pt"


def test_predictions_do_not_depend_on_the_batch(model, data_dir, cache_root):
    folder = data_dir / "samples" / "cgcnn_regression"
    alone = predict(model, folder, batch_size=1, cache_root=cache_root)
    together = predict(model, folder, batch_size=64, cache_root=cache_root)
    assert len(alone.ids) == 10
    np.testing.assert_allclose(alone.values, together.values, rtol=1e-5, atol=1e-6)


def test_unreadable_crystals_are_listed_and_the_rest_predicted(
    model, data_dir, cache_root, tmp_path
):
    folder = tmp_path / "poscars"
    shutil.copytree(data_dir / "samples" / "jarvis_poscar", folder)
    (folder / "POSCAR-broken.vasp").write_text("not a POSCAR\n1.0\n")
    with pytest.warns(UserWarning, match=r"^1 of 71 crystals could not be used .* listed in "):
        result = predict(model, folder, cache_root=tmp_path / "cache")
    assert len(result.ids) == 70
    assert [bad.id for bad in result.skipped] == ["POSCAR-broken"] or any(
        "broken" in b.source for b in result.skipped
    )
    assert all(np.isfinite(result.values))
    path = write_predictions_csv(result, tmp_path / "predictions.csv")
    assert len(path.read_text().splitlines()) == 71


def test_embeddings_export(model, data_dir, cache_root, tmp_path):
    result = embed(model, data_dir / "samples" / "cgcnn_regression", cache_root=cache_root)
    assert result.values.shape == (10, 128)
    path = write_embeddings_npz(result, tmp_path / "emb.npz")
    with np.load(path) as data:
        assert data["embeddings"].shape == (10, 128)
        assert list(data["ids"]) == [str(i) for i in result.ids]
        assert "label_target" in data.files


def test_a_pretrained_encoder_cannot_predict(reference_dir, data_dir, cache_root, tmp_path):
    with pytest.raises(ValueError, match="no property head"):
        predict(
            reference_dir / "CGCNNBarlow_model.pth",
            data_dir / "samples" / "cgcnn_regression",
            cache_root=tmp_path / "cache",
        )
    assert not (tmp_path / "cache").exists()  # refused before any graph was built
    from crystaltwins.models.checkpoint import load_model

    with pytest.raises(ValueError, match="^the given model: a pre-trained encoder") as refused:
        predict(load_model("crystal-twins"), data_dir / "samples" / "cgcnn_regression")
    assert "\n" not in str(refused.value) and "ModelBundle(" not in str(refused.value)
    emb = embed(
        reference_dir / "CGCNNBarlow_model.pth",
        data_dir / "samples" / "cgcnn_regression",
        cache_root=cache_root,
    )
    assert emb.values.shape == (10, 128)


def _read_csv(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_prediction_file_names_the_property_unit_formula_and_true_value(
    model, perovskite_subset, cache_root, tmp_path
):
    result = predict(model, perovskite_subset, cache_root=cache_root)
    assert result.target == "e_form" and result.truth is not None
    rows = _read_csv(write_predictions_csv(result, tmp_path / "p.csv"))
    assert list(rows[0]) == ["id", "formula", "property", "prediction", "unit", "true_value"]
    assert rows[0]["id"] == str(result.ids[0]) and rows[0]["property"] == "e_form"
    assert rows[0]["formula"] == result.formulas[0] and rows[0]["formula"].isalnum()
    assert float(rows[0]["true_value"]) == pytest.approx(result.labels["e_form"][0])
    for row, value in zip(rows, result.values, strict=True):  # float32 precision, no noise
        assert np.float32(row["prediction"]) == np.float32(value)
        assert len(row["prediction"].replace("-", "").replace(".", "")) <= 9
    frame = result.to_dataframe()
    assert list(frame.columns) == list(rows[0]) and len(frame) == len(rows)
    # an earlier predictions file of this layout may be replaced, as before
    assert write_predictions_csv(result, tmp_path / "p.csv").exists()


def test_prediction_columns_of_an_ensemble_and_units_from_the_registry(tmp_path):
    from crystaltwins.evaluation.inference import InferenceResult, _describe_target, float32_text

    members = np.array([[1.0, 1.2], [0.1, 0.30000001192092896]])
    result = InferenceResult(np.array(["a", "b"]), members.mean(1), {}, [])
    result.std, result.members = members.std(1), members
    result.formulas = np.array(["SrTiO3", "NaCl"])
    _describe_target(result, {"targets": ["e_form"], "data_source": "/d/perovskites.csv.gz"})
    assert result.unit == "eV/cell" and result.truth is None
    rows = _read_csv(write_predictions_csv(result, tmp_path / "e.csv"))
    assert list(rows[0]) == [
        "id", "formula", "property", "prediction", "unit", "std", "member_0", "member_1"
    ]  # fmt: skip
    assert rows[1]["member_1"] == "0.3" and rows[0]["unit"] == "eV/cell"
    assert float32_text(float("nan")) == "" and float32_text(1e-7) == "1e-07"
    # an auxiliary target's column cannot become the name of the prediction column
    result.auxiliary = {"efermi": np.array([0.5, 1.5])}
    assert list(_read_csv(write_predictions_csv(result, tmp_path / "a.csv"))[0])[-1] == (
        "predicted_efermi"
    )
    with pytest.raises(ValueError, match="cannot be named 'predicted_efermi': taken"):
        write_predictions_csv(result, tmp_path / "b.csv", column="predicted_efermi")
    assert not (tmp_path / "b.csv").exists()
    # a model saved with a unit keeps it; a log10 unit is that of its values
    _describe_target(result, {"targets": ["G_VRH"], "unit": "log10(GPa)"})
    assert result.unit == "GPa"


def test_a_single_structure_leaves_no_cache_behind(model, data_dir, tmp_path, monkeypatch):
    root = tmp_path / "cache_root"
    monkeypatch.setenv("CRYSTALTWINS_CACHE", str(root))
    one = data_dir / "samples" / "jarvis_poscar" / "POSCAR-JVASP-10.vasp"
    result = predict(model, one)
    assert list(result.ids) == ["POSCAR-JVASP-10"] and np.isfinite(result.values).all()
    assert not root.exists() or not any(root.iterdir())
    # a folder of structures is worth its cache
    predict(model, data_dir / "samples" / "cgcnn_regression")
    assert any(p.is_dir() for p in root.iterdir())


def test_out_writes_the_file_after_the_checks_of_the_cli(model, data_dir, cache_root, tmp_path):
    """``predict(..., out=)`` / ``embed(..., out=)``: the file the CLI writes; a user's other
    file is refused before any work, and input without one usable crystal writes nothing."""
    from pymatgen.core import Lattice, Structure

    folder = data_dir / "samples" / "cgcnn_regression"
    out = tmp_path / "predictions.csv"
    result = predict(model, folder, cache_root=cache_root, out=out)
    assert out.read_text() == write_predictions_csv(result, tmp_path / "same.csv").read_text()
    again = embed(model, folder, cache_root=cache_root, out=tmp_path / "emb.npz")
    with np.load(tmp_path / "emb.npz") as saved:
        np.testing.assert_array_equal(saved["embeddings"], again.values)

    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    with pytest.raises(ValueError, match="notes.csv"):
        predict(model, folder, cache_root=cache_root, out=notes)
    assert notes.read_text() == "my,own\n1,2\n"

    written = out.read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.cif").write_text("data_x\nnot a crystal\n")
    with pytest.raises(ValueError, match="nothing was written"):
        predict(model, empty, cache_root=tmp_path / "cache", out=out)
    assert out.read_text() == written  # the earlier predictions stay

    lonely = Structure(Lattice.cubic(3.9), ["Sr", "Ti"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    single = embed(model, [lonely], out=tmp_path / "one.npz")
    assert single.values.shape == (1, 128) and (tmp_path / "one.npz").exists()


def test_no_usable_crystal_still_gives_rows_of_the_right_width(model):
    """An isolated atom is skipped: the embedding is ``(0, H)``, and the outputs of a
    two-logit (classifier) head ``(0, 2)``, not a ``(0, 1)`` placeholder that a softmax
    then fails on."""
    from pymatgen.core import Lattice, Structure

    from crystaltwins.evaluation.inference import batched_outputs
    from crystaltwins.models.checkpoint import load_model
    from crystaltwins.models.heads import PropertyHead
    from crystaltwins.models.property_model import PropertyModel, Target

    isolated = Structure(Lattice.cubic(30.0), ["Na"], [[0, 0, 0]])
    bundle = load_model(model)
    with pytest.warns(UserWarning, match="^1 of 1 crystals could not be used"):
        emb = embed(bundle, [isolated])
    assert emb.values.shape == (0, bundle.encoder.out_dim) and len(emb.skipped) == 1
    classifier = PropertyModel(
        bundle.encoder, PropertyHead(bundle.encoder.out_dim, 16, 2), Target(task="classification")
    )
    outputs = batched_outputs(classifier, [classifier], [])
    assert outputs.shape == (0, 2) and classifier.in_target_units(outputs).shape == (0,)


def test_text_or_a_list_of_paths_is_named_clearly(model, data_dir):
    from crystaltwins.io.records import CrystalInputError

    cif = next((data_dir / "samples" / "cgcnn_regression").glob("*.cif"))
    with pytest.raises(CrystalInputError, match="not a path: give the file's path"):
        predict(model, cif.read_text())
    with pytest.raises(CrystalInputError, match="item 0 of the list is a PosixPath.*folder"):
        predict(model, [cif])
