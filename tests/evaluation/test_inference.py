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


def test_a_pretrained_encoder_cannot_predict(reference_dir, data_dir, cache_root):
    with pytest.raises(ValueError, match="no property head"):
        predict(
            reference_dir / "CGCNNBarlow_model.pth",
            data_dir / "samples" / "cgcnn_regression",
            cache_root=cache_root,
        )
    emb = embed(
        reference_dir / "CGCNNBarlow_model.pth",
        data_dir / "samples" / "cgcnn_regression",
        cache_root=cache_root,
    )
    assert emb.values.shape == (10, 128)
