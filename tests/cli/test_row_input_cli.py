"""Row-level bad input through the command line: too few crystals, label columns decided from all
rows, --cif-column, a cache that notices an edit that kept the file's size and time."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from crystaltwins.cli.main import main
from crystaltwins.data.cache import GraphCache, source_fingerprint


def run(*args: str) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


def perovskite_csv(source: Path, path: Path, n: int, rename_cif: str | None = None) -> Path:
    csv.field_size_limit(2**31 - 1)
    with gzip.open(source, "rt", newline="") as handle:
        rows = list(csv.reader(handle))[: n + 1]
    if rename_cif:
        rows[0][rows[0].index("cif")] = rename_cif
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.mark.parametrize("n", [1, 3])
def test_finetune_on_too_few_crystals_exits_2(perovskite_subset, cache_root, tmp_path, capsys, n):
    data = perovskite_csv(perovskite_subset, tmp_path / f"p{n}.csv", n)
    out = tmp_path / "run"
    code, _ = run(
        "finetune", str(data), "--target", "e_form", "--out", str(out), "--from-scratch",
        "--epochs", "1", "--cache-root", str(cache_root), "--no-progress", "--accelerator", "cpu",
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{n} crystals are too few for the random split 0.6/0.2/0.2" in err
    assert "needs at least 5 crystals" in err
    assert not (out / "metrics.json").exists()


def test_finetune_keeps_a_column_whose_first_values_are_not_numbers(
    perovskite_subset, cache_root, tmp_path
):
    """The first 150 labels are 'N/A' / 'unknown', the other 100 numbers: the 100 crystals are
    trained on, the 150 listed in invalid_targets.csv (before: 'no numeric label column')."""
    csv.field_size_limit(2**31 - 1)
    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        rows = list(csv.reader(handle))[:251]
    k = rows[0].index("e_form")
    for number in range(1, 151):
        rows[number][k] = "N/A" if number % 2 else "unknown"
    data = tmp_path / "labels.csv"
    with data.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    out = tmp_path / "run"
    code, printed = run(
        "finetune", str(data), "--target", "e_form", "--out", str(out), "--from-scratch",
        "--epochs", "1", "--batch-size", "32", "--cache-root", str(cache_root), "--no-progress",
        "--accelerator", "cpu",
    )  # fmt: skip
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["crystals"]["dropped_invalid_target"] == 150
    assert sum(metrics["crystals"][p] for p in ("train", "val", "test")) == 100
    listed = list(csv.DictReader((out / "invalid_targets.csv").open()))
    assert [r["id"] for r in listed] == [rows[n][0] for n in range(1, 151)]


def test_cif_column_flag(perovskite_subset, tmp_path, capsys):
    data = perovskite_csv(perovskite_subset, tmp_path / "named.csv", 5, rename_cif="crystal")
    assert main(["featurize", str(data), "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "--cif-column NAME" in capsys.readouterr().err
    code, printed = run(
        "featurize", str(data), "--out", str(tmp_path / "c"), "--no-progress",
        "--cif-column", "crystal",
    )  # fmt: skip
    assert code == 0 and "crystals built: 5" in printed


def test_cache_notices_an_edit_that_keeps_size_and_time(perovskite_subset, tmp_path):
    data = perovskite_csv(perovskite_subset, tmp_path / "p.csv", 5)
    cache = tmp_path / "cache"
    assert run("featurize", str(data), "--out", str(cache), "--no-progress")[0] == 0
    before = GraphCache(cache).labels(["e_form"])[:, 0].copy()
    stat = data.stat()
    fingerprint = source_fingerprint(data)
    content = data.read_bytes()
    with data.open(newline="") as handle:
        rows = list(csv.reader(handle))
    k = rows[0].index("e_form")
    value = rows[1][k]
    edited = value[:-1] + ("8" if value[-1] == "9" else "9")  # same length
    assert content.count(f",{value},".encode()) == 1
    data.write_bytes(content.replace(f",{value},".encode(), f",{edited},".encode()))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # touch -r
    assert data.stat().st_size == stat.st_size and data.stat().st_mtime_ns == stat.st_mtime_ns
    assert source_fingerprint(data) != fingerprint
    code, printed = run("featurize", str(data), "--out", str(cache), "--no-progress")
    assert code == 0 and "reused" not in printed
    after = GraphCache(cache).labels(["e_form"])[:, 0]
    assert after[0] == pytest.approx(float(edited))
    assert np.array_equal(after[1:], before[1:])
