"""The command line on real files."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout

import numpy as np
from pymatgen.core import Structure

from crystaltwins.cli.main import main
from crystaltwins.graph.crystal_graph import build_crystal_graph


def run(*args: str) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


def test_graph_prints_one_row_per_edge(data_dir):
    cif = sorted((data_dir / "samples" / "cgcnn_regression").glob("*.cif"))[0]
    code, out = run("graph", str(cif))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    graph = build_crystal_graph(Structure.from_file(cif))
    assert len(rows) == len(graph.edges)
    assert set(rows[0]) == {"atom", "neighbor", "distance_A", "image_a", "image_b", "image_c"}
    np.testing.assert_allclose(
        [float(r["distance_A"]) for r in rows], graph.edges.distance, atol=1e-6
    )
    code, out = run("graph", str(cif), "--format", "json", "--max-neighbors", "4")
    data = json.loads(out)
    assert len(data["edges"]) == 4 * len(data["species"])


def test_featurize_prints_the_summary(data_dir, tmp_path):
    code, out = run(
        "featurize",
        str(data_dir / "samples" / "jarvis_poscar"),
        "--out",
        str(tmp_path / "c"),
        "--workers",
        "2",
        "--no-progress",
    )
    assert code == 0
    assert "crystals built: 70" in out and "skipped: 0" in out and "bytes on disk" in out
    code, out = run(
        "featurize",
        str(data_dir / "samples" / "jarvis_poscar"),
        "--out",
        str(tmp_path / "c"),
        "--no-progress",
    )
    assert "reused" in out


def test_bad_input_gives_a_clear_error(tmp_path, capsys):
    code = main(["featurize", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing.csv" in err


def test_embed_and_plot(reference_dir, data_dir, tmp_path):
    emb = tmp_path / "emb.npz"
    code, _ = run(
        "embed",
        str(reference_dir / "CGCNNBarlow_model.pth"),
        str(data_dir / "samples" / "jarvis_poscar"),
        "--out",
        str(emb),
        "--cache-root",
        str(tmp_path),
    )
    assert code == 0
    code, _ = run("plot", str(emb), "--out", str(tmp_path / "map.png"), "--method", "pca")
    assert code == 0 and (tmp_path / "map.png").stat().st_size > 10_000
    rows = list(csv.DictReader((tmp_path / "map.csv").open()))
    assert len(rows) == 70
