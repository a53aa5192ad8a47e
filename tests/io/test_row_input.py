"""Bad input at the row level: one bad CSV row costs that row only, with its true row number;
label column types are decided from all rows."""

from __future__ import annotations

import csv
import gzip
import io
import math
import shutil
from pathlib import Path

import pytest

from crystaltwins.io.readers import iter_entries, read_records
from crystaltwins.io.records import BadRecord, CrystalRecord
from tests.helpers import read_cifs


@pytest.fixture(scope="module")
def perovskite_rows(data_dir: Path) -> list[list[str]]:
    """400 real perovskites as CSV rows: id, cif, e_form (eV/cell)."""
    return [
        [i, cif, f"{0.01 * k:.2f}"]
        for k, (i, cif) in enumerate(read_cifs(data_dir / "perovskites.csv.gz", 400))
    ]


def csv_bytes(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


HEADER = ["id", "cif", "e_form"]


@pytest.mark.parametrize("compressed", [False, True])
def test_non_utf8_byte_costs_its_row_only(
    tmp_path: Path, perovskite_rows: list[list[str]], compressed: bool
) -> None:
    rows = [list(r) for r in perovskite_rows]
    data = (
        csv_bytes([HEADER, *rows[:299]])
        + csv_bytes([rows[299]]).replace(b"_cell_length_a", b"_cell_\xff\xfelength_a", 1)
        + csv_bytes(rows[300:])
    )
    path = tmp_path / ("bad.csv.gz" if compressed else "bad.csv")
    if compressed:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    entries = list(iter_entries(path, ["e_form"]))
    assert len(entries) == 400
    bad = [e for e in entries if e.error is not None]
    assert len(bad) == 1
    assert bad[0].source == f"{path}:row 300"
    assert "not UTF-8 text: byte 0xff in column 'cif'" in bad[0].error
    assert [e.id for e in entries if e.error is None] == [
        r[0] for k, r in enumerate(rows) if k != 299
    ]


def test_binary_junk_row_is_skipped_and_later_rows_kept(
    tmp_path: Path, perovskite_rows: list[list[str]]
) -> None:
    rows = perovskite_rows
    junk = bytes(range(256)) * 2 + b"\n"
    path = tmp_path / "junk.csv"
    path.write_bytes(csv_bytes([HEADER, *rows[:299]]) + junk + csv_bytes(rows[299:]))
    results = list(read_records(path))
    good = [r for r in results if isinstance(r, CrystalRecord)]
    bad = [r for r in results if isinstance(r, BadRecord)]
    assert [r.id for r in good] == [r[0] for r in rows]
    assert bad and all(b.source.startswith(f"{path}:row 30") for b in bad)
    assert all(b.id.isprintable() for b in bad)  # no control characters in skipped.csv


def test_truncated_gzip_keeps_the_rows_before(
    tmp_path: Path, perovskite_rows: list[list[str]]
) -> None:
    whole = gzip.compress(csv_bytes([HEADER, *perovskite_rows]))
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    entries = list(iter_entries(path))
    good = [e for e in entries if e.error is None]
    assert 50 < len(good) < 400
    assert "cannot be read from here on" in entries[-1].error


@pytest.mark.parametrize("missing", ["N/A", "unknown"])
def test_label_type_is_decided_from_all_rows(
    tmp_path: Path, perovskite_rows: list[list[str]], missing: str
) -> None:
    """150 of the first 200 values are not numbers, the other 250 are: the column is numeric,
    and the 150 become NaN (invalid labels), not a text column that loses 250 labels."""
    rows = [[i, cif, missing if k < 150 else e] for k, (i, cif, e) in enumerate(perovskite_rows)]
    path = tmp_path / "labels.csv"
    path.write_bytes(csv_bytes([HEADER, *rows]))
    entries = list(iter_entries(path))
    assert all("e_form" in e.labels and "e_form" not in e.metadata for e in entries)
    values = [e.labels["e_form"] for e in entries]
    assert sum(math.isnan(v) for v in values) == 150
    assert values[150:] == [float(r[2]) for r in rows[150:]]


def test_text_column_stays_text(tmp_path: Path, perovskite_rows: list[list[str]]) -> None:
    """A mostly-text column (formula-like, with a few numbers and N/A) is metadata; ``Na`` is
    sodium, not a missing value."""
    rows = [
        [i, cif, "Na" if k % 3 else ("12" if k % 2 else "N/A")]
        for k, (i, cif, _) in enumerate(perovskite_rows[:250])
    ]
    path = tmp_path / "text.csv"
    path.write_bytes(csv_bytes([["id", "cif", "formula"], *rows]))
    entries = list(iter_entries(path))
    assert all(e.metadata["formula"] == r[2] for e, r in zip(entries, rows, strict=True))
    assert all("formula" not in e.labels for e in entries)


def test_label_table_row_with_a_bad_byte_costs_that_row(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "cgcnn"
    shutil.copytree(data_dir / "samples" / "cgcnn_regression", folder)
    table = folder / "id_prop.csv"
    lines = table.read_bytes().splitlines()
    lines[2] += b"\xff"
    table.write_bytes(b"\n".join(lines) + b"\n")
    results = list(read_records(folder, ["target"]))
    bad = [r for r in results if isinstance(r, BadRecord)]
    good = [r for r in results if isinstance(r, CrystalRecord)]
    assert len(good) == 9
    assert bad[0].source == f"{table}:row 3"
    assert "not UTF-8 text: byte 0xff in column 'target'" in bad[0].reason
