"""What the figures say: units, which model, R², readable learning curves, map colouring."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from crystaltwins.evaluation.plots import (
    draw_map,
    learning_curves,
    learning_curves_figure,
    parity_figure,
    parity_plot,
    project_2d,
)
from crystaltwins.evaluation.tasks import known_unit, metric_unit, value_unit, with_known_unit


def test_parity_title_names_the_model_the_mae_with_its_unit_and_r2(tmp_path: Path) -> None:
    truth = np.array([0.0, 1.0, 2.0, 3.0])
    prediction = truth + np.array([0.1, -0.1, 0.1, -0.1])
    fig = parity_figure(truth, prediction, "e_form", "eV/cell", "CT fine-tuned")
    ax = fig.axes[0]
    assert ax.get_title() == "CT fine-tuned, test set (n = 4)\nMAE 0.1 eV/cell, R² 0.992"
    assert ax.get_xlabel() == "true e_form (eV/cell)"
    assert ax.get_ylabel() == "predicted e_form (eV/cell)"
    plt.close(fig)
    # a log10 run shows the values and the unit it is scored on
    fig = parity_figure(truth, prediction, "G_VRH", "GPa", "CGCNN from scratch", "log10")
    assert fig.axes[0].get_xlabel() == "true log10 G_VRH (log10(GPa))"
    assert "MAE 0.1 log10(GPa)" in fig.axes[0].get_title()
    plt.close(fig)
    assert parity_plot(truth, prediction, tmp_path / "parity.png", "e_form").stat().st_size > 5000


def _history(path: Path, rows: list[dict[str, float]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_finetuning_curves_have_named_legends_integer_epochs_and_the_unit(tmp_path: Path) -> None:
    rows = [
        {"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "train_mae": 0.5,
         "val_mae": 0.6, "lr": 1e-3}
        for e in range(3)
    ]  # fmt: skip
    fig = learning_curves_figure(_history(tmp_path / "history.csv", rows), "e_form", "eV/cell",
                                 "MSE (standardised target)")  # fmt: skip
    loss, mae = fig.axes
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["training", "validation"]
    assert loss.get_ylabel() == "MSE (standardised target)"
    assert mae.get_ylabel() == "MAE of e_form (eV/cell)"
    ticks = [t for t in loss.get_xticks() if 0 <= t <= 2]
    assert ticks == [0, 1, 2]  # whole epochs, no 0.5
    plt.close(fig)


def test_pretraining_history_gives_a_loss_plot(tmp_path: Path) -> None:
    rows = [{"epoch": e, "train_loss": 20.0 - e, "val_loss": 30.0 - e} for e in range(15)]
    history = _history(tmp_path / "history.csv", rows)
    fig = learning_curves_figure(history, loss_name="Barlow Twins loss")
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "Barlow Twins loss"
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)
    assert learning_curves(history, tmp_path / "curves.png").stat().st_size > 5000
    assert learning_curves(tmp_path / "missing.csv", tmp_path / "none.png") is None


def test_map_counts_crystals_without_a_label_and_pca_axes_give_variance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)) * np.array([5, 1, 1, 1, 1, 1, 1, 1])
    color = rng.uniform(0.5, 2.0, size=40)
    color[:3] = np.nan  # no label
    color[3:5] = -1.0  # not shown on a log scale
    ids = np.array([f"c{k}" for k in range(40)])
    summary = draw_map(ids, vectors, {"gap": color}, tmp_path / "map.png", "pca",
                       units={"gap": "eV"})  # fmt: skip
    assert summary.uncoloured == 3
    assert "3 of 40 crystals have no value of 'gap'" in "\n".join(summary.lines())
    with open(tmp_path / "map.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["id", "x", "y", "gap"] and table[0]["gap"] == ""
    logged = draw_map(ids, vectors, {"gap": color}, tmp_path / "map.png", "pca", log_color=True)
    assert logged.uncoloured == 5  # a log colour scale also leaves out values <= 0
    assert "5 of 40 crystals have no value > 0 (log colour scale) of 'gap'" in logged.lines()[1]
    projection = project_2d(vectors, "pca")
    first, second = projection.axis_labels
    assert first.startswith("PC1 (") and first.endswith("% of variance)")
    assert float(first[5:].split("%")[0]) > float(second[5:].split("%")[0])
    with pytest.raises(ValueError, match="no label 'e_form'"):
        draw_map(ids, vectors, {"gap": color}, tmp_path / "map.png", "pca", color="e_form")


def test_units_of_the_shared_files_come_from_the_task_registry() -> None:
    assert known_unit("/data/perovskites.csv.gz", "e_form") == "eV/cell"
    assert known_unit("mp36k.csv.gz", "formation_energy_per_atom") == "eV/atom"
    assert known_unit("mp_elasticity.csv.gz", "G_VRH") == "GPa"  # its values; metrics in log10
    assert known_unit("mine.csv", "e_form") == "" and known_unit("mp36k.csv.gz", "x") == ""
    assert value_unit("log10(GPa)") == "GPa" and metric_unit("GPa", "log10") == "log10(GPa)"
    assert metric_unit("log10(GPa)", "log10") == "log10(GPa)" and metric_unit("", "log10") == ""
    from crystaltwins.training.finetune import FinetuneConfig

    config = FinetuneConfig(data="/x/perovskites.csv.gz", target="e_form", out="o")
    assert with_known_unit(config).unit == "eV/cell"
    given = FinetuneConfig(data="/x/perovskites.csv.gz", target="e_form", out="o", unit="meV")
    assert with_known_unit(given).unit == "meV"


def test_model_label_names_the_start() -> None:
    from crystaltwins.evaluation.plots import model_label
    from crystaltwins.models.pretrained import shipped_model_path

    assert model_label("scratch") == "CGCNN from scratch"
    ct = model_label("crystal-twins")
    assert ct == model_label(str(shipped_model_path("crystal-twins"))) == "CT fine-tuned"
    assert model_label("default") == ct  # recorded by a run made when "default" named it
    assert model_label("mp-multi-33k") == "fine-tuned from mp-multi-33k"
    assert model_label("/runs/my_pretrain/model.pt") == "fine-tuned from my_pretrain"
    assert model_label("/models/source.pt") == "fine-tuned from source.pt"


@pytest.mark.parametrize(("method", "name"), [("tsne", "t-SNE"), ("umap", "UMAP")])
def test_a_map_of_too_few_crystals_is_refused_in_our_words(method, name) -> None:
    vectors = np.random.default_rng(0).normal(size=(2, 8))
    with pytest.raises(ValueError, match=rf"^a 2-D {name} map needs at least 3 crystals, got 2$"):
        project_2d(vectors, method)
    assert project_2d(vectors, "pca").coordinates.shape == (2, 2)  # PCA draws two
    with pytest.raises(ValueError, match=r"^a 2-D PCA map needs at least 2 crystals, got 1$"):
        project_2d(vectors[:1], "pca")
