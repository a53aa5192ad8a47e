"""``--id-key KEY``: the ids of an extxyz file's crystals from ``Atoms.info[KEY]``, through
featurize, graph, pretrain, finetune, predict and embed (and into the graph cache's key)."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms

from crystaltwins.cli.main import main
from crystaltwins.data.cache import GraphCache

#: Frame 3 has no "structure_name": it is skipped and named, the others keep their names.
NAMES = ["NaCl-a", "NaCl-b", "NaCl-c", None, "NaCl-e", "NaCl-f", "NaCl-g", "NaCl-h"]


def run(*args: str) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """Rock-salt NaCl frames of slightly different cells, each with ``info["structure_name"]``
    (but frame 3), a running ``info["number"]`` and a label ``info["e_form"]`` (eV)."""
    images = []
    for k, name in enumerate(NAMES):
        a = 5.5 + 0.05 * k
        atoms = Atoms(
            "Na4Cl4",
            scaled_positions=[
                [0, 0, 0],
                [0, 0.5, 0.5],
                [0.5, 0, 0.5],
                [0.5, 0.5, 0],
                [0.5, 0.5, 0.5],
                [0.5, 0, 0],
                [0, 0.5, 0],
                [0, 0, 0.5],
            ],  # fmt: skip
            cell=[a, a, a],
            pbc=True,
        )
        if name is not None:
            atoms.info["structure_name"] = name
        atoms.info["number"] = f"n{k}"
        atoms.info["e_form"] = -2.0 + 0.01 * k
        images.append(atoms)
    path = tmp_path / "frames.extxyz"
    ase.io.write(path, images, format="extxyz")
    return path


def _skipped(cache: Path) -> list[dict[str, str]]:
    with (cache / "skipped.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_featurize_takes_ids_from_the_key_and_names_frames_without_it(frames, tmp_path):
    cache = tmp_path / "c"
    code, printed = run(
        "featurize", str(frames), "--out", str(cache), "--no-progress", "--workers", "1",
        "--id-key", "structure_name",
    )  # fmt: skip
    assert code == 0, printed
    built = GraphCache(cache)
    assert list(built.ids) == [n for n in NAMES if n is not None]
    (bad,) = _skipped(cache)
    assert bad["id"] == "frames:3" and "no 'structure_name'" in bad["reason"]
    assert json.loads((cache / "manifest.json").read_text())["key"]["id_key"] == "structure_name"
    # another key rebuilds the cache (the key is part of the cache's key); no key: detected ids
    assert run(
        "featurize", str(frames), "--out", str(cache), "--no-progress", "--id-key", "number"
    )[0] == 0  # fmt: skip
    assert list(GraphCache(cache).ids) == [f"n{k}" for k in range(len(NAMES))]
    assert run("featurize", str(frames), "--out", str(cache), "--no-progress")[0] == 0
    assert "id_key" not in json.loads((cache / "manifest.json").read_text())["key"]
    # "number" is no id name and "structure_name" is not in every frame: positions
    assert list(GraphCache(cache).ids) == [f"frames:{k}" for k in range(len(NAMES))]


def test_a_key_no_frame_has_is_one_line(frames, tmp_path, capsys):
    code = main(["featurize", str(frames), "--out", str(tmp_path / "c"), "--id-key", "nosuch"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no 'nosuch' in the info of any frame" in err and "structure_name" in err
    assert not (tmp_path / "c").exists()


def test_graph_prints_the_id_from_the_key(frames, capsys):
    assert main(["graph", str(frames), "--format", "json", "--id-key", "number"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "n0"


def test_predict_and_embed_take_the_key(frames, tiny_model, tmp_path):
    common = ["--cache-root", str(tmp_path / "caches"), "--id-key", "structure_name"]
    out = tmp_path / "p.csv"
    code, printed = run("predict", str(tiny_model), str(frames), "--out", str(out), *common)
    assert code == 0, printed
    with out.open(newline="") as handle:
        assert [r["id"] for r in csv.DictReader(handle)] == [n for n in NAMES if n]
    assert "frames.extxyz:frame 3: no 'structure_name'" in printed
    npz = tmp_path / "e.npz"
    assert run("embed", str(tiny_model), str(frames), "--out", str(npz), *common)[0] == 0
    with np.load(npz) as arrays:
        assert list(arrays["ids"]) == [n for n in NAMES if n]


def test_finetune_and_pretrain_take_the_key(frames, tmp_path):
    common = [
        "--epochs", "1", "--no-progress", "--id-key", "structure_name", "--batch-size", "4",
        "--cache-root", str(tmp_path / "caches"), "--accelerator", "cpu",
    ]  # fmt: skip
    out = tmp_path / "ft"
    code, printed = run(
        "finetune", str(frames), "--target", "e_form", "--out", str(out), "--from-scratch",
        "--n-conv", "1", "--h-fea-len", "16", "--no-plots", *common,
    )  # fmt: skip
    assert code == 0, printed
    with (out / "test_predictions.csv").open(newline="") as handle:
        tested = [r["id"] for r in csv.DictReader(handle)]
    assert tested and set(tested) <= {n for n in NAMES if n}
    assert yaml.safe_load((out / "config.yaml").read_text())["id_key"] == "structure_name"
    pre = tmp_path / "pre"
    code, printed = run(
        "pretrain", str(frames), "--out", str(pre), "--n-conv", "1", "--val-fraction", "0.3",
        *common,
    )  # fmt: skip
    assert code == 0, printed
    assert "7 crystals (reused), 1 skipped" in printed  # finetune's cache: the same key
    assert yaml.safe_load((pre / "config.yaml").read_text())["id_key"] == "structure_name"
