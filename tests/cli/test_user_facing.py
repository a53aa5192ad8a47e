"""What a user sees: units on the console and in files, `info`, `cache`, `plot` messages."""

from __future__ import annotations

import csv
import gzip
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from crystaltwins.cli.main import main


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_info_prints_what_a_model_is_and_refuses_other_files(tmp_path: Path) -> None:
    code, out, _ = run("info", "crystal-twins")
    assert code == 0 and "type: pre-trained encoder" in out and "objective: barlow_twins" in out
    code, out, _ = run("info", "default")  # the best start measured: mp-multi-33k
    assert code == 0 and "crystaltwins_mp_multi_33k.pt" in out and "type: property model" in out
    (tmp_path / "notes.pt").write_text("not a model")
    code, _, err = run("info", str(tmp_path / "notes.pt"))
    assert code == 2 and err.startswith("crystaltwins info: error: ") and err.count("\n") == 1


def test_cache_list_and_clean(data_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "caches"
    code, out, _ = run("cache", "list", "--cache-root", str(root))
    assert code == 0 and out.startswith("no graph caches under")
    sample = data_dir / "samples" / "cgcnn_regression"
    assert run("featurize", str(sample), "--out", str(root / "sample"), "--no-progress")[0] == 0
    code, out, _ = run("cache", "list", "--cache-root", str(root))
    assert "sample" in out and "1 caches" in out and str(sample) in out
    code, out, _ = run("cache", "clean", "--cache-root", str(root), "--older-than", "1")
    assert "removed 0 caches" in out and (root / "sample").exists()  # used today
    code, out, _ = run("cache", "clean", "--cache-root", str(root), "--dry-run")
    assert "would remove 1 caches" in out and (root / "sample").exists()
    code, out, _ = run("cache", "clean", "--cache-root", str(root))
    assert code == 0 and "removed 1 caches" in out and not (root / "sample").exists()


def test_plot_says_how_many_crystals_were_left_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gap = rng.uniform(0.1, 3.0, size=30)
    gap[:4] = np.nan
    np.savez(
        tmp_path / "emb.npz",
        ids=np.array([f"c{k}" for k in range(30)]),
        embeddings=rng.normal(size=(30, 6)),
        label_gap=gap,
    )
    code, out, _ = run("plot", str(tmp_path / "emb.npz"), "--out", str(tmp_path / "map.png"),
                       "--method", "pca", "--log-color")  # fmt: skip
    assert code == 0 and "4 of 30 crystals have no value > 0 (log colour scale) of 'gap'" in out
    assert (tmp_path / "map.png").stat().st_size > 5000


@pytest.mark.slow
def test_finetune_predict_info_show_the_unit_of_a_shared_file(
    perovskite_subset: Path, cache_root: Path, tmp_path: Path
) -> None:
    """A file named like a shared one (perovskites.csv.gz) gets its target's unit without
    --unit: on the console, in the model file, in predictions and on the figures."""
    import matplotlib.image as mpimg

    data = tmp_path / "perovskites.csv.gz"
    with gzip.open(perovskite_subset, "rt") as source, gzip.open(data, "wt") as target:
        target.writelines(line for k, line in zip(range(2_000), source, strict=False))
    run_dir = tmp_path / "ct"
    common = ["--cache-root", str(cache_root), "--accelerator", "cpu", "--no-progress"]
    code, out, _ = run("finetune", str(data), "--target", "e_form", "--out", str(run_dir),
                       "--from-scratch", "--epochs", "2", *common)  # fmt: skip
    assert code == 0 and " eV/cell on " in out.strip().splitlines()[-1]
    assert mpimg.imread(run_dir / "learning_curves.png").shape[1] > 500
    code, out, _ = run("info", str(run_dir))
    assert "target: e_form (eV/cell)" in out and "started from: random weights" in out
    assert "test metrics: MAE " in out and " eV/cell, RMSE" in out
    code, _, _ = run("predict", str(run_dir), str(data), "--out", str(tmp_path / "p.csv"),
                     "--cache-root", str(cache_root))  # fmt: skip
    with open(tmp_path / "p.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["unit"] == "eV/cell" and row["property"] == "e_form" and row["true_value"]


@pytest.mark.slow
def test_pretrain_draws_its_loss_curves(data_dir: Path, cache_root: Path, tmp_path: Path) -> None:
    folder = data_dir / "samples" / "jarvis_poscar"
    out = tmp_path / "pre"
    code, _, _ = run("pretrain", str(folder), "--out", str(out), "--epochs", "2",
                     "--batch-size", "16", "--cache-root", str(cache_root), "--no-progress",
                     "--accelerator", "cpu", "--val-fraction", "0.2")  # fmt: skip
    assert code == 0
    with open(out / "history.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    from crystaltwins.evaluation.plots import learning_curves_figure

    figure = learning_curves_figure(out / "history.csv", loss_name="Barlow Twins loss")
    assert [line.get_label() for line in figure.axes[0].lines] == ["training", "validation"]
    assert (out / "learning_curves.png").stat().st_size > 5000


def test_a_device_or_accelerator_name_is_checked_in_one_line(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """``--device auto`` picks the GPU or the CPU; an unknown device or accelerator is one line
    naming the choices, before any work (no cache, no output)."""
    import torch

    data = str(data_dir / "samples" / "cgcnn_regression")
    cache = str(tmp_path / "cache")
    out = tmp_path / "p.csv"
    code, stdout, err = run(
        "predict",
        str(tiny_model),
        data,
        "--out",
        str(out),
        "--device",
        "auto",
        "--cache-root",
        cache,
    )
    assert code == 0 and out.exists(), err
    if not torch.cuda.is_available():
        code, _, err = run("predict", str(tiny_model), data, "--out", str(out), "--device", "cuda")
        assert code == 2 and "no CUDA GPU available" in err and err.count("\n") == 1
    for command, flag in (("predict", "--device"), ("embed", "--device")):
        code, _, err = run(
            command, str(tiny_model), data, "--out", str(tmp_path / "x"), flag, "tpu"
        )
        assert code == 2 and "unknown device 'tpu'" in err and err.count("\n") == 1
    code, _, err = run(
        "finetune", data, "--target", "target", "--from-scratch", "--out", str(tmp_path / "r"),
        "--accelerator", "tpu", "--cache-root", str(tmp_path / "cache2"),
    )  # fmt: skip
    assert code == 2 and "unknown accelerator 'tpu'; choose from auto, cpu" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache2").exists()
    assert not (tmp_path / "x").exists()


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("epochs: 3\ntarget: [\n")
    code, _, err = run(
        "finetune",
        "data.csv",
        "--target",
        "t",
        "--out",
        str(tmp_path / "r"),
        "--config",
        str(config),
    )
    assert code == 2 and err.count("\n") == 1
    assert "settings.yaml: not valid YAML (line 3)" in err
    code, _, err = run("finetune", "--config", str(tmp_path / "nothere.yaml"))
    assert code == 2 and err.strip().endswith(
        f"error: {tmp_path / 'nothere.yaml'}: no such config file"
    )


def test_a_run_stopped_by_sigterm_says_how_to_resume(monkeypatch) -> None:
    """Lightning turns SIGTERM (``kill``, a scheduler's preemption) into ``SIGTERMException``
    after saving nothing more: the command says how to continue, exit status 143."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from crystaltwins.cli import main as cli_main

    def stopped(args):
        raise SIGTERMException(1)

    monkeypatch.setitem(cli_main.COMMANDS, "finetune", stopped)
    code, _, err = run("finetune", "data.csv", "--target", "t", "--out", "o")
    assert code == 143 and err.count("\n") == 1
    assert "stopped by SIGTERM; " in err and "--resume" in err


def test_a_warning_is_one_line_without_python_source(data_dir: Path) -> None:
    """The command line shows its warnings as one line each, not Python's ``file:line`` form."""
    import subprocess
    import sys

    sample = data_dir / "samples" / "ase_json" / "14816.json"  # a Pt cluster, pbc False
    done = subprocess.run(
        [sys.executable, "-m", "crystaltwins", "graph", str(sample)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("crystaltwins: warning: ")
    assert "treated as periodic" in lines[0] and ".py:" not in done.stderr
