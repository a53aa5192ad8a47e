"""``predict``, ``embed`` and ``plot`` take a run folder wherever they take its ``model.pt``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from crystaltwins.cli.main import main
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.checkpoint import ModelBundle, save_model
from crystaltwins.models.heads import PropertyHead


@pytest.fixture(scope="module")
def samples(data_dir):
    return data_dir / "samples" / "cgcnn_regression"


@pytest.fixture(scope="module")
def run_folder(samples, tmp_path_factory):
    """A finished run's folder: ``model.pt`` (a small fine-tuned model) beside its other files."""
    featurizer = AtomFeaturizer.from_json(samples / "atom_init.json")
    torch.manual_seed(0)
    encoder = CGCNNEncoder(torch.tensor(featurizer.table), atom_fea_len=16, n_conv=1, h_fea_len=16)
    info = {
        "target_transform": "log10",
        "target_mean": 1.2,
        "target_std": 0.3,
        "task": "regression",
    }
    bundle = ModelBundle(
        encoder, PropertyHead(16, 8, 1), "finetuned", featurizer, GraphSettings(), info
    )
    run = tmp_path_factory.mktemp("runs") / "ct"
    save_model(run / "model.pt", bundle)
    (run / "checkpoints").mkdir()
    return run


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_embed_and_plot_take_a_run_folder(run_folder, samples, cache_root, tmp_path):
    common = ["--cache-root", str(cache_root)]
    for source, tag in ((run_folder, "folder"), (run_folder / "model.pt", "file")):
        assert (
            main(
                [
                    "predict",
                    str(source),
                    str(samples),
                    "--out",
                    str(tmp_path / f"{tag}_predictions.csv"),
                    *common,
                ]
            )
            == 0
        )
        assert (
            main(
                ["embed", str(source), str(samples), "--out", str(tmp_path / f"{tag}.npz"), *common]
            )
            == 0
        )
        plot = ["plot", str(source), "--data", str(samples), "--method", "pca"]
        assert main([*plot, "--out", str(tmp_path / f"{tag}_map.png")]) == 0
    folder = _rows(tmp_path / "folder_predictions.csv")
    file = _rows(tmp_path / "file_predictions.csv")
    assert len(folder) == 10 and folder == file
    assert all(float(r["prediction"]) > 0 for r in folder)  # GPa-like: 10**x of the log10 head
    with np.load(tmp_path / "folder.npz") as a, np.load(tmp_path / "file.npz") as b:
        np.testing.assert_array_equal(a["embeddings"], b["embeddings"])
    assert (tmp_path / "folder_map.png").exists()
    assert _rows(tmp_path / "folder_map.csv") == _rows(tmp_path / "file_map.csv")


def test_a_folder_without_model_pt_is_one_line(run_folder, samples, tmp_path, capsys):
    empty = tmp_path / "notarun"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "last.ckpt").write_bytes(b"")
    for folder, words in ((empty, "a folder without model.pt"), (unfinished, "--resume")):
        for argv in (
            ["predict", str(folder), str(samples), "--out", str(tmp_path / "p.csv")],
            ["embed", str(folder), str(samples), "--out", str(tmp_path / "e.npz")],
            ["plot", str(folder), "--data", str(samples), "--out", str(tmp_path / "m.png")],
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"crystaltwins {argv[0]}: error: {folder}: ")
            assert words in err and err.count("\n") == 1
    assert not any((tmp_path / name).exists() for name in ("p.csv", "e.npz", "m.png"))
