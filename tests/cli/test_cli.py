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
    assert list(rows[0]) == [
        "atom",
        "neighbor",
        "distance_A",
        "image_a",
        "image_b",
        "image_c",
        "atom_species",
        "neighbor_species",
    ]
    structure = Structure.from_file(cif)
    for row in rows:  # each edge names the elements of its two atoms
        assert row["atom_species"] == structure[int(row["atom"])].specie.symbol
        assert row["neighbor_species"] == structure[int(row["neighbor"])].specie.symbol
    np.testing.assert_allclose(
        [float(r["distance_A"]) for r in rows], graph.edges.distance, atol=1e-6
    )
    code, out = run("graph", str(cif), "--format", "json", "--max-neighbors", "4")
    data = json.loads(out)
    assert len(data["edges"]) == 4 * len(data["species"])


def test_graph_of_a_file_of_several_crystals_says_which_and_takes_an_id(data_dir, capsys):
    folder = str(data_dir / "samples" / "cgcnn_regression")
    assert main(["graph", folder, "--format", "json"]) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)["id"]
    assert f"holds 10 crystals; this is the first ({first}); --id ID shows another" in captured.err
    assert main(["graph", folder, "--format", "json", "--id", "9012304"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["id"] == "9012304" and captured.err == ""
    assert main(["graph", folder, "--id", "nope"]) == 2
    assert "no crystal with the id 'nope'" in capsys.readouterr().err


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


def _small_csv(perovskite_subset, tmp_path, n: int = 60, bad_labels: dict | None = None):
    """The first ``n`` real perovskites, with some labels replaced."""
    import gzip

    csv.field_size_limit(2**31 - 1)
    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        rows = list(csv.reader(handle))[: n + 1]
    column = rows[0].index("e_form")
    for row_number, value in (bad_labels or {}).items():
        rows[row_number][column] = value
    path = tmp_path / "small.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path, [rows[k][0] for k in sorted(bad_labels or {})]


def test_finetune_settings_from_config_and_invalid_labels(perovskite_subset, cache_root, tmp_path):
    data, bad_ids = _small_csv(perovskite_subset, tmp_path, bad_labels={3: "abc", 7: ""})
    out = tmp_path / "run"
    config = tmp_path / "settings.yaml"
    config.write_text(
        f"target: e_form\nout: {out}\nfrom_scratch: true\nepochs: 1\nbatch_size: 16\n"
        f"cache_root: {cache_root}\nprogress: false\n"
    )
    code, printed = run("finetune", str(data), "--config", str(config))
    assert code == 0
    assert "2 crystals without a number in 'e_form' are left out" in printed
    listed = list(csv.DictReader((out / "invalid_targets.csv").open()))
    assert [r["id"] for r in listed] == bad_ids
    assert {(r["e_form"], r["problem"]) for r in listed} == {("", "missing or not a number")}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["crystals"]["dropped_invalid_target"] == 2


def test_finetune_reports_missing_and_inconsistent_settings(perovskite_subset, tmp_path, capsys):
    data = str(perovskite_subset)
    assert main(["finetune", data, "--pretrained", "default"]) == 2
    assert "give --target, --out" in capsys.readouterr().err
    args = ["finetune", data, "--target", "e_form", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "exactly one of --pretrained MODEL and --from-scratch" in capsys.readouterr().err
    assert main([*args, "--from-scratch", "--split", "0.8", "0.3", "0.2"]) == 2
    assert "add up to 1, got 1.3" in capsys.readouterr().err
    missing = str(tmp_path / "nope.txt")
    assert main([*args, "--from-scratch", "--split-files", data, data, missing]) == 2
    assert f"--split-files: no such file {missing!r}" in capsys.readouterr().err
    assert main([*args, "--from-scratch", "--epochs", "0"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err


def test_pretrain_with_too_few_crystals_for_validation(data_dir, cache_root, tmp_path, capsys):
    folder = data_dir / "samples" / "cgcnn_regression"
    n = len(list(folder.glob("*.cif")))
    code = main(
        ["pretrain", str(folder), "--out", str(tmp_path / "p"), "--epochs", "1"]
        + ["--cache-root", str(cache_root), "--no-progress"]
    )
    assert code == 2
    assert f"{n} crystals are too few for a validation fraction of 0.05" in capsys.readouterr().err
    # a validation split of one crystal (Barlow Twins standardises over the batch)
    code = main(
        ["pretrain", str(folder), "--out", str(tmp_path / "p1"), "--epochs", "1"]
        + ["--val-fraction", "0.1", "--cache-root", str(cache_root), "--no-progress"]
    )
    assert code == 2
    assert "(validation 1, training 9: both need at least 2 crystals)" in capsys.readouterr().err


def test_model_and_device_errors_are_one_line(reference_dir, data_dir, tmp_path, capsys):
    import torch

    samples = str(data_dir / "samples" / "jarvis_poscar")
    not_a_model = data_dir / "samples" / "cgcnn_regression" / "id_prop.csv"
    code = main(["predict", str(not_a_model), samples, "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert "not a crystaltwins model file nor a Crystal Twins state dict" in err
    assert "weights_only" not in err and "Traceback" not in err
    if not torch.cuda.is_available():
        code = main(
            ["embed", "default", samples, "--out", str(tmp_path / "e.npz")] + ["--device", "cuda"]
        )
        assert code == 2 and "no CUDA GPU available" in capsys.readouterr().err


def test_embed_a_published_checkpoint_away_from_its_atom_init(
    reference_dir, data_dir, cache_root, tmp_path, capsys
):
    import shutil

    moved = tmp_path / "CGCNNBarlow_model.pth"
    shutil.copy(reference_dir / "CGCNNBarlow_model.pth", moved)
    samples = str(data_dir / "samples" / "jarvis_poscar")
    out = tmp_path / "e.npz"
    common = [samples, "--out", str(out), "--cache-root", str(cache_root)]
    assert main(["embed", str(moved), *common]) == 2
    assert "--atom-init on the command line" in capsys.readouterr().err
    code = main(
        ["embed", str(moved), *common, "--atom-init", str(reference_dir / "atom_init.json")]
    )
    assert code == 0
    with np.load(out) as result:
        assert result["embeddings"].shape[0] == 70


def test_two_process_pretrain_on_cpu_says_things_once(data_dir, cache_root, tmp_path):
    """``--devices 2`` runs the command again for rank 1: its messages must not repeat."""
    import subprocess
    import sys

    from crystaltwins.models.checkpoint import load_model

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "crystaltwins.cli.main", "pretrain"]
    command += [str(data_dir / "samples" / "hmof_cif"), "--out", str(out), "--epochs", "1"]
    command += ["--devices", "2", "--accelerator", "cpu", "--batch-size", "8", "--no-progress"]
    command += ["--cache-root", str(cache_root)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert sum("hmof_cif: 100 crystals" in line for line in lines) == 1, lines
    assert sum(line.startswith("pre-trained model:") for line in lines) == 1, lines
    assert not [line for line in lines if "Warning" in line], lines
    bundle = load_model(out / "model.pt")
    assert bundle.kind == "pretrained"


def test_predict_says_where_true_values_come_from(
    tiny_model, perovskite_subset, data_dir, cache_root, tmp_path
):
    """A CGCNN folder calls its label 'target' whatever it is: predict says so beside the true
    values it fills from it; a named column is named plainly."""
    from tests.cli.conftest import make_tiny_model

    common = ["--cache-root", str(cache_root), "--device", "cpu"]
    generic = make_tiny_model(tmp_path / "generic.pt", "target")
    folder = str(data_dir / "samples" / "cgcnn_regression")
    code, printed = run("predict", str(generic), folder, "--out", str(tmp_path / "a.csv"), *common)
    assert code == 0
    assert "true_value: the input's 'target' column (a generic label name: check" in printed
    with open(tmp_path / "a.csv", newline="") as handle:
        assert all(row["true_value"] for row in csv.DictReader(handle))
    data = str(perovskite_subset)
    code, printed = run("predict", str(tiny_model), data, "--out", str(tmp_path / "b.csv"), *common)
    assert code == 0
    assert "true_value: the input's 'e_form' column\n" in printed


def test_every_help_that_names_the_shipped_models_names_them_all():
    """The parser stays free of torch, so the names are written in its help texts: a new shipped
    model must be added to each."""
    import argparse

    from crystaltwins.cli.main import build_parser
    from crystaltwins.models.pretrained import SHIPPED_MODELS

    helps = []
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("predict", "embed", "info", "finetune", "bench"):
        for action in subparsers.choices[name]._actions:
            if action.help and "mp-eform" in action.help:
                helps.append((name, action.dest, action.help))
    assert {name for name, _, _ in helps} >= {"predict", "embed", "info", "finetune", "bench"}
    for name, dest, text in helps:
        missing = [m for m in SHIPPED_MODELS if f"'{m}'" not in text]
        assert not missing, f"{name} --{dest} help lacks {missing}"


def test_an_interrupted_run_says_how_to_continue_it():
    """Members trained together keep no checkpoints: their hint does not promise to continue
    after the last finished epoch."""
    import argparse

    from crystaltwins.cli.main import _resume_hint

    single = _resume_hint(argparse.Namespace(command="finetune", members_together=False))
    assert "--resume to continue after the last finished epoch" in single
    together = _resume_hint(argparse.Namespace(command="finetune", members_together=True))
    assert "--resume" in together and "start again from their first epoch" in together
    assert "after the last finished epoch" not in together
    assert "finished runs are reused" in _resume_hint(argparse.Namespace(command="bench"))
