"""`predict` / `embed` outputs never replace what they did not write; failures are one line."""

from __future__ import annotations

import errno
import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from crystaltwins.cli.main import main
from crystaltwins.evaluation.inference import (
    InferenceResult,
    check_output_file,
    write_predictions_csv,
)


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_out_that_is_a_folder_or_a_foreign_file_is_refused_before_any_work(command, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("id,cif,e_form\n")
    model = tmp_path / "missing-model.pt"  # never opened: the output is checked first
    code, _, err = cli(command, str(model), str(data), "--out", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "is a folder; give a file name" in err
    code, _, err = cli(command, str(model), str(data), "--out", str(data))
    assert code == 2 and "exists and is not an earlier" in err and "nothing was written" in err
    assert data.read_text() == "id,cif,e_form\n"


def test_an_earlier_predictions_file_is_replaced_a_user_table_is_not(tmp_path):
    result = InferenceResult(np.array(["a", "b"]), np.array([1.0, 2.0]), {}, [])
    path = write_predictions_csv(result, tmp_path / "p.csv")
    write_predictions_csv(result, path)  # the command's own earlier output
    assert path.read_text().splitlines() == [
        "id,formula,property,prediction,unit",
        "a,,,1.0,",
        "b,,,2.0,",
    ]
    # a bare id,prediction table: an early version's output, or a user's own predictions
    path.write_text("id,prediction\na,1.0\n")
    with pytest.raises(ValueError, match="not an earlier predictions file"):
        write_predictions_csv(result, path)
    assert path.read_text() == "id,prediction\na,1.0\n"
    labels = tmp_path / "id_prop.csv"
    labels.write_text("id,e_form\na,0.5\n")  # two columns with an id, but the user's labels
    with pytest.raises(ValueError, match="not an earlier predictions file"):
        check_output_file(labels, "predictions")
    embeddings = tmp_path / "e.npz"
    np.savez(embeddings, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not an earlier embeddings file"):
        check_output_file(embeddings, "embeddings")


def test_plot_never_replaces_a_users_image_or_table(tmp_path):
    """`plot --out` replaces only an earlier map of its own (image + id,x,y table)."""
    embeddings = tmp_path / "e.npz"
    rng = np.random.default_rng(0)
    np.savez(
        embeddings, ids=np.array([f"c{i}" for i in range(12)]), embeddings=rng.normal(size=(12, 4))
    )
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"the user's figure")
    code, _, err = cli("plot", str(embeddings), "--out", str(figure), "--method", "pca")
    assert code == 2 and err.count("\n") == 1 and "nothing was written" in err
    assert figure.read_bytes() == b"the user's figure"
    (tmp_path / "table.csv").write_text("id,e_form\na,1\n")
    code, _, err = cli(
        "plot", str(embeddings), "--out", str(tmp_path / "table.png"), "--method", "pca"
    )
    assert code == 2 and (tmp_path / "table.csv").read_text() == "id,e_form\na,1\n"
    fresh = tmp_path / "map.png"
    assert cli("plot", str(embeddings), "--out", str(fresh), "--method", "pca")[0] == 0
    assert cli("plot", str(embeddings), "--out", str(fresh), "--method", "pca")[0] == 0  # its own
    assert fresh.with_suffix(".csv").read_text().startswith("id,x,y")
    # an earlier map's table beside a user's image of another format: the image is kept
    assert (
        cli("plot", str(embeddings), "--out", str(tmp_path / "fig.jpg"), "--method", "pca")[0] == 0
    )
    (tmp_path / "fig.png").write_bytes(b"\x89PNG the user's own figure")
    code, _, err = cli(
        "plot", str(embeddings), "--out", str(tmp_path / "fig.png"), "--method", "pca"
    )
    assert code == 2 and (tmp_path / "fig.png").read_bytes() == b"\x89PNG the user's own figure"
    for kind in ("pdf", "jpg"):  # its own earlier map of any format is replaced (was refused)
        again = tmp_path / f"again.{kind}"
        assert cli("plot", str(embeddings), "--out", str(again), "--method", "pca")[0] == 0
        assert cli("plot", str(embeddings), "--out", str(again), "--method", "pca")[0] == 0


def test_metrics_json_is_strict_json() -> None:
    import json
    import math

    from crystaltwins.evaluation.metrics import metrics_json, regression_metrics

    one = regression_metrics(np.array([1.0]), np.array([1.5]))  # R² of one crystal: NaN
    assert math.isnan(one["r2"])
    text = metrics_json({"test": one, "values": [float("inf"), 2.0]})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"test": {**one, "r2": None}, "values": [None, 2.0]}


def test_torch_disk_full_error_becomes_one_line(tmp_path, monkeypatch):
    """``torch.save`` on a full disk raises ``RuntimeError: ... unexpected pos ...``
    (simulated here by raising it from the checkpoint writer)."""
    import torch

    from crystaltwins.training.common import AtomicCheckpointIO

    def full(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
            "file data/3: file write failed; unexpected pos 4160 vs 4056"
        )

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as caught:
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "checkpoints" / "last.ckpt")
    assert caught.value.errno == errno.ENOSPC
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no half-written file left
    import crystaltwins.evaluation.runs as finetune_module

    def failing(config, callbacks=None):
        torch.save({}, tmp_path / "model.pt")

    monkeypatch.setattr(finetune_module, "finetune", failing)
    code, _, err = cli(
        "finetune", "d.csv", "--target", "t", "--from-scratch", "--out", str(tmp_path / "run")
    )
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("crystaltwins finetune: error: no space left on the disk")


@pytest.mark.parametrize("name", ["fig3", "map.csv", "map.txt"])
def test_a_map_without_a_picture_format_is_refused_before_any_work(name, tmp_path):
    """``plot --out fig3`` said "Format 'tmp-24911-3c47e897' is not supported" (Matplotlib read
    the format from our hidden temporary's name), after the embedding and the map were made."""
    missing = tmp_path / "missing.npz"  # never opened: the output is checked first
    code, _, err = cli("plot", str(missing), "--out", str(tmp_path / name))
    assert code == 2 and err.count("\n") == 1
    assert "no picture format in the name; end it in .png, .pdf, .svg or .jpg" in err
    assert list(tmp_path.iterdir()) == []
