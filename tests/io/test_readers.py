"""Readers: every layout on the real samples, label tables, ASE formats, Python objects, bad input."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import itertools
import math
import pickle
import shutil
import warnings
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from pymatgen.core import IStructure, Lattice, Molecule, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from crystaltwins.io import readers
from crystaltwins.io.readers import (
    RawEntry,
    find_atom_init,
    iter_entries,
    parse_entry,
    read_records,
    records_from_structures,
)
from crystaltwins.io.records import BadRecord, CrystalInputError, CrystalRecord
from tests.helpers import read_cifs


def split(results: list[CrystalRecord | BadRecord]) -> tuple[list[CrystalRecord], list[BadRecord]]:
    good = [r for r in results if isinstance(r, CrystalRecord)]
    bad = [r for r in results if isinstance(r, BadRecord)]
    assert len(good) + len(bad) == len(results)
    return good, bad


def read_table(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return [row for row in csv.reader(handle) if row]


@pytest.fixture(scope="module")
def samples(data_dir: Path) -> Path:
    return data_dir / "samples"


@pytest.fixture(scope="module")
def real_structure(data_dir: Path) -> Structure:
    """A real 48-atom hybrid perovskite (hoip row 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(read_cifs(data_dir / "hoip.csv.gz", 1)[0][1], fmt="cif")


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---- CSV files with a CIF column ---------------------------------------------------------


def test_perovskites_csv_entries(data_dir: Path) -> None:
    path = data_dir / "perovskites.csv.gz"
    entries = list(iter_entries(path, targets=["gap_gllbsc"]))
    assert len(entries) == 18_928
    first = entries[0]
    assert first.id == "perov_0"
    assert first.source == f"{path}:row 1"
    assert first.fmt == "cif-text" and first.payload.startswith("# generated using pymatgen")
    assert first.labels == {"e_form": 2.16, "gap_gllbsc": 0.0, "fermi_level": 0.312137666029}
    assert first.metadata == {"formula": "RhTeN3"}
    assert first.error is None
    assert entries[-1].source == f"{path}:row 18928"
    assert len({e.id for e in entries}) == len(entries)
    record = parse_entry(first)
    assert record.structure.composition.reduced_formula == "TeRhN3"
    assert record.labels == first.labels and record.metadata == first.metadata
    assert record.source == first.source


def test_qmof_csv_split_is_metadata(data_dir: Path) -> None:
    results = []
    for k, record in enumerate(read_records(data_dir / "qmof.csv.gz", targets=["band_gap"])):
        results.append(record)
        if k == 19:
            break
    good, bad = split(results)
    assert not bad and len(good) == 20
    assert all(set(r.labels) == {"band_gap"} for r in good)
    assert all(r.metadata["split"] in {"train", "val", "test"} for r in good)
    assert good[0].id == "qmof-8a95c27"
    assert good[0].labels["band_gap"] == pytest.approx(0.632527)
    assert all(len(r.structure) > 10 for r in good)


def test_csv_bad_rows_become_bad_records(tmp_path: Path, data_dir: Path) -> None:
    cifs = read_cifs(data_dir / "perovskites.csv.gz", 4)
    text = cifs[0][1]
    partial = text.replace(
        "  Te  Te1  1  0.50000000  0.50000000  0.50000000  1",
        "  Te  Te1  1  0.50000000  0.50000000  0.50000000  0.5\n"
        "  Se  Se9  1  0.50000000  0.50000000  0.50000000  0.5",
    )
    rows = [
        ["a", cifs[1][1], "1.5", "X"],
        ["b", cifs[2][1], "", "X"],  # missing label
        ["c", cifs[3][1], "abc", "X"],  # non-numeric label
        ["d", "data_broken\nthis is not a CIF at all", "2.0", "X"],  # unparsable CIF
        ["e", partial, "3.0", "X"],  # partial occupancy
        ["f", "", "4.0", "X"],  # no structure
    ]
    path = write_csv(tmp_path / "small.csv.gz", ["id", "cif", "band_gap", "formula"], rows)
    good, bad = split(list(read_records(path, targets=["band_gap"])))
    assert [r.id for r in good] == ["a"]
    assert good[0].labels == {"band_gap": 1.5} and good[0].metadata == {"formula": "X"}
    reasons = {b.id: str(b) for b in bad}
    assert reasons["b"] == f"{path}:row 2: label 'band_gap' is missing"
    assert reasons["c"] == f"{path}:row 3: label 'band_gap' is not a number: 'abc'"
    assert reasons["d"].startswith(f"{path}:row 4: unparsable CIF")
    assert reasons["e"] == (
        f"{path}:row 5: partial occupancy on site 1 (Te0.5 Se0.5): "
        "disordered structures are not supported"
    )
    assert reasons["f"].startswith(f"{path}:row 6: empty structure field")

    # Without targets, a non-numeric value in a numeric column is NaN, not an error.
    good, bad = split(list(read_records(path)))
    assert [r.id for r in good] == ["a", "b", "c"]
    assert math.isnan(good[1].labels["band_gap"]) and math.isnan(good[2].labels["band_gap"])


def test_duplicate_ids_are_bad(tmp_path: Path, data_dir: Path) -> None:
    cifs = read_cifs(data_dir / "perovskites.csv.gz", 2)
    rows = [["x", cifs[0][1]], ["x", cifs[1][1]]]
    path = write_csv(tmp_path / "dup.csv", ["id", "cif"], rows)
    good, bad = split(list(read_records(path)))
    assert len(good) == 1
    assert str(bad[0]) == f"{path}:row 2: duplicate id 'x' (also at {path}:row 1)"
    # a first row unusable from the start (no label) claims no id: the second is read
    rows = [["x", cifs[0][1], ""], ["x", cifs[1][1], "1.5"]]
    path = write_csv(tmp_path / "dup_label.csv", ["id", "cif", "e_form"], rows)
    good, bad = split(list(read_records(path, targets=["e_form"])))
    assert [(r.id, r.labels["e_form"]) for r in good] == [("x", 1.5)]
    assert [b.source for b in bad] == [f"{path}:row 1"] and "missing" in bad[0].reason


def test_an_empty_id_never_takes_a_real_ids_place(tmp_path: Path, data_dir: Path) -> None:
    """Row 2's id left empty was named "2", the id of the crystal in row 4: that crystal was then
    skipped as a duplicate and row 2's crystal predicted under its name. An empty id now names
    its row ("row 2"), which no real id is taken for."""
    cifs = read_cifs(data_dir / "perovskites.csv.gz", 3)
    rows = [["a", cifs[0][1]], ["", cifs[1][1]], ["2", cifs[2][1]]]
    path = write_csv(tmp_path / "holes.csv", ["id", "cif"], rows)
    good, bad = split(list(read_records(path)))
    assert [r.id for r in good] == ["a", "row 2", "2"] and bad == []
    assert good[2].structure.composition == Structure.from_str(cifs[2][1], "cif").composition
    without = write_csv(tmp_path / "no_ids.csv", ["cif"], [[c[1]] for c in cifs])
    assert [e.id for e in iter_entries(without)] == ["1", "2", "3"]  # no id column: row numbers


def test_a_label_column_of_text_is_refused_before_any_graph(tmp_path: Path, data_dir: Path) -> None:
    """Labels written with their units (``2.16 eV``) or as ``True``/``False``: every crystal was
    skipped after the graph cache was built, and the message said the column was missing. Now
    one line from the first rows, with an example; a few bad values among numbers are still
    skipped row by row."""
    from crystaltwins.io.readers import check_target_columns

    cifs = read_cifs(data_dir / "perovskites.csv.gz", 3)
    for values, example in (
        (["2.16 eV", "1.5 eV", ""], "'2.16 eV'"),
        (["True", "False", "True"], "'True'"),
    ):
        rows = [[i, text, v] for (i, text), v in zip(cifs, values, strict=True)]
        path = write_csv(tmp_path / "text.csv", ["id", "cif", "y"], rows)
        with pytest.raises(
            CrystalInputError, match=f"holds no number in its first 3 rows \\(e.g. {example}\\)"
        ):
            check_target_columns(path, ["y"])
    rows = [[i, text, v] for (i, text), v in zip(cifs, ["2.16 eV", "1.5", ""], strict=True)]
    check_target_columns(write_csv(tmp_path / "mixed.csv", ["id", "cif", "y"], rows), ["y"])
    empty = [[i, text, ""] for i, text in cifs]  # no labels at all: said later, with the count
    check_target_columns(write_csv(tmp_path / "empty.csv", ["id", "cif", "y"], empty), ["y"])


def test_csv_structure_column_names(tmp_path: Path, data_dir: Path) -> None:
    cifs = read_cifs(data_dir / "mp36k.csv.gz", 2)
    rows = [[text, crystal_id, "1.0"] for crystal_id, text in cifs]
    path = write_csv(tmp_path / "s.csv", ["structure", "material_id", "y"], rows)
    assert [e.id for e in iter_entries(path)] == [c[0] for c in cifs]

    path = write_csv(tmp_path / "custom.csv", ["my_cif", "y"], [[cifs[0][1], "2"]])
    entries = list(iter_entries(path, cif_column="my_cif"))
    assert entries[0].id == "1" and entries[0].labels == {"y": 2.0}  # row number as id
    with pytest.raises(CrystalInputError, match="no CIF column.*'my_cif', 'y'"):
        list(iter_entries(path))
    with pytest.raises(CrystalInputError, match="no column 'nope'"):
        list(iter_entries(path, cif_column="nope"))


def test_csv_pymatgen_json_and_poscar_text(tmp_path: Path, real_structure: Structure) -> None:
    rows = [
        ["json", real_structure.to_json()],
        ["poscar", real_structure.to(fmt="poscar")],
    ]
    path = write_csv(tmp_path / "other.csv", ["id", "structure"], rows)
    good, bad = split(list(read_records(path)))
    assert not bad
    for record in good:
        assert len(record.structure) == len(real_structure)
        assert np.allclose(record.structure.lattice.matrix, real_structure.lattice.matrix)


def test_unknown_target_column(data_dir: Path, samples: Path) -> None:
    path = data_dir / "hoip.csv.gz"
    with pytest.raises(CrystalInputError) as info:
        list(iter_entries(path, targets=["gap"]))
    assert info.value.source == str(path)
    assert "unknown target column(s) 'gap'" in str(info.value)
    assert "available columns: 'band_gap'" in str(info.value)

    with pytest.raises(CrystalInputError, match=r"id_prop.csv: unknown target.*'target'"):
        list(iter_entries(samples / "cgcnn_regression", targets=["band_gap"]))
    with pytest.raises(CrystalInputError, match="no label table"):
        list(iter_entries(samples / "hmof_cif", targets=["band_gap"]))
    with pytest.raises(CrystalInputError, match="available columns: none"):
        list(iter_entries(samples / "hmof_cif" / "hMOF-1233.cif", targets=["band_gap"]))


def test_unreadable_sources(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv.gz"
    with pytest.raises(CrystalInputError, match="missing.csv.gz: no such file or folder"):
        list(iter_entries(missing))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CrystalInputError, match=r"empty.csv: empty CSV file"):
        list(iter_entries(tmp_path / "empty.csv"))
    (tmp_path / "header_only.csv").write_text("id,cif,y\n")
    with pytest.raises(CrystalInputError, match="header_only.csv: empty CSV file"):
        list(iter_entries(tmp_path / "header_only.csv"))
    (tmp_path / "nocif.csv").write_text("id,formula,y\n1,NaCl,2\n")
    with pytest.raises(CrystalInputError, match="nocif.csv: no CIF column.*'formula'"):
        list(iter_entries(tmp_path / "nocif.csv"))
    (tmp_path / "thing.abcxyz").write_text("hello\n")
    with pytest.raises(CrystalInputError, match="thing.abcxyz: unknown structure file format"):
        list(iter_entries(tmp_path / "thing.abcxyz"))
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(CrystalInputError, match="other.json: unknown structure file format"):
        list(iter_entries(tmp_path / "other.json"))
    empty_folder = tmp_path / "empty_folder"
    empty_folder.mkdir()
    with pytest.raises(CrystalInputError, match="empty_folder: no structure files found"):
        list(iter_entries(empty_folder))
    with pytest.raises(CrystalInputError, match="read_records_missing: no such file"):
        list(read_records(tmp_path / "read_records_missing"))


# ---- CGCNN folders --------------------------------------------------------------------------


def test_cgcnn_regression_folder(samples: Path) -> None:
    folder = samples / "cgcnn_regression"
    table = read_table(folder / "id_prop.csv")
    good, bad = split(list(read_records(folder, targets=["target"])))
    assert not bad
    assert [r.id for r in good] == [row[0] for row in table]
    assert [r.labels for r in good] == [{"target": float(row[1])} for row in table]
    assert [r.labels["target"] for r in good] == [float(k) for k in range(1, 11)]
    assert good[0].source == str(folder / "1000041.cif")
    assert good[0].structure.composition.reduced_formula == "NaCl"
    assert find_atom_init(folder) == folder / "atom_init.json"
    assert find_atom_init(folder / "id_prop.csv") == folder / "atom_init.json"
    assert find_atom_init(samples / "hmof_cif") is None


@pytest.mark.parametrize("first_row", ["{id},", "{id}"])
def test_a_headerless_table_whose_first_row_lacks_its_label(
    tmp_path: Path, samples: Path, first_row: str
) -> None:
    """The first row with an empty label (or none) is a data row, not a header: that crystal
    is skipped as missing its label, the others keep theirs."""
    folder = tmp_path / "folder"
    shutil.copytree(samples / "cgcnn_regression", folder)
    table = read_table(folder / "id_prop.csv")
    lines = [first_row.format(id=table[0][0])] + [",".join(row) for row in table[1:]]
    (folder / "id_prop.csv").write_text("\n".join(lines) + "\n")
    good, bad = split(list(read_records(folder, targets=["target"])))
    assert [b.id for b in bad] == [table[0][0]] and "label 'target' is missing" in bad[0].reason
    assert [r.labels["target"] for r in good] == [float(row[1]) for row in table[1:]]


def test_cgcnn_classification_folder(samples: Path) -> None:
    folder = samples / "cgcnn_classification"
    good, bad = split(list(read_records(folder, targets=["target"])))
    assert not bad and len(good) == 10
    assert [r.labels["target"] for r in good] == [1.0, 0.0] * 5


def test_cgcnn_id_prop_path_reads_the_folder(samples: Path) -> None:
    folder = samples / "cgcnn_regression"
    entries = list(iter_entries(folder / "id_prop.csv"))
    assert [e.id for e in entries] == [e.id for e in iter_entries(folder)]


def test_multi_target_cgcnn_folder(tmp_path: Path, samples: Path) -> None:
    source = samples / "cgcnn_regression"
    folder = tmp_path / "multi"
    folder.mkdir()
    ids = [row[0] for row in read_table(source / "id_prop.csv")]
    for crystal_id in ids[:5]:
        shutil.copy(source / f"{crystal_id}.cif", folder)
    lines = [f"{cid},{k},{k * 10},{-k}" for k, cid in enumerate(ids[:4])]
    lines.append(f"{ids[4]},1.0,,2.0")  # target_1 missing
    lines.append("9999999,1,2,3")  # no such file
    (folder / "id_prop.csv").write_text("\n".join(lines) + "\n")

    entries = list(iter_entries(folder))
    assert [e.id for e in entries] == ids[:5] + ["9999999"]
    assert entries[2].labels == {"target_0": 2.0, "target_1": 20.0, "target_2": -2.0}

    good, bad = split(list(read_records(folder, targets=["target_1"])))
    assert [r.id for r in good] == ids[:4]
    reasons = {b.id: str(b) for b in bad}
    assert reasons[ids[4]] == (
        f"{folder / (ids[4] + '.cif')}: label 'target_1' is missing (id_prop.csv row 5)"
    )
    assert reasons["9999999"] == (
        f"{folder / 'id_prop.csv'}:row 6: no structure file for id '9999999' in {folder}"
    )
    good, bad = split(list(read_records(folder, targets=["target_0", "target_2"])))
    assert len(good) == 5 and len(bad) == 1


# ---- folders of other structure files -------------------------------------------------------


def test_jarvis_poscar_folder(samples: Path) -> None:
    folder = samples / "jarvis_poscar"
    table = {row[0]: float(row[1]) for row in read_table(folder / "id_prop.csv")}
    assert len(table) == 50
    good, bad = split(list(read_records(folder)))
    assert len(good) == 70 and not bad
    labelled = [r for r in good if r.labels]
    assert len(labelled) == 50
    for record in labelled:
        assert record.labels == {"target": table[record.id + ".vasp"]}
        assert record.source == str(folder / (record.id + ".vasp"))
    assert good[0].id == "POSCAR-JVASP-90856"  # table order first
    jvasp10 = next(r for r in good if r.id == "POSCAR-JVASP-10")
    assert jvasp10.structure.composition.reduced_formula == "VSe2"

    good, bad = split(list(read_records(folder, targets=["target"])))
    assert len(good) == 50 and len(bad) == 20
    assert all(
        "label 'target' is missing (the file is not listed in id_prop.csv)" in b.reason for b in bad
    )
    assert all(b.source.endswith(".vasp") for b in bad)


@pytest.mark.filterwarnings("ignore::crystaltwins.io.readers.NonPeriodicWarning")  # tested below
def test_ase_json_folder(samples: Path) -> None:
    folder = samples / "ase_json"
    energies = {row[0]: float(row[1]) for row in read_table(folder / "targets.csv")}
    assert len(energies) == 1000  # no header: the first row is data
    good, bad = split(list(read_records(folder, targets=["target"])))
    assert not bad and len(good) == 1000
    assert {r.id: r.labels["target"] for r in good} == energies
    first = good[0]
    assert first.id == "14816" and first.labels == {"target": -41.39614}
    # Pt clusters in a 20 Å box (pbc False in the files): kept as periodic structures in the box.
    assert first.structure.composition.reduced_formula == "Pt"
    assert len(first.structure) == 10
    assert np.allclose(first.structure.lattice.abc, (20.0, 20.0, 20.0))
    assert all(first.structure.lattice.pbc)


def test_hmof_folder_without_labels(samples: Path) -> None:
    folder = samples / "hmof_cif"
    good, bad = split(list(read_records(folder)))
    assert not bad and len(good) == 100
    assert good[0].id == "hMOF-1000268" and good[0].labels == {}
    assert all(r.id.startswith("hMOF-") for r in good)
    assert min(len(r.structure) for r in good) > 30


def test_folder_with_header_table_and_mixed_formats(
    tmp_path: Path, real_structure: Structure
) -> None:
    atoms = AseAtomsAdaptor.get_atoms(real_structure)
    real_structure.to(filename=str(tmp_path / "a.cif"))
    real_structure.to(filename=str(tmp_path / "POSCAR_b"), fmt="poscar")
    ase.io.write(tmp_path / "c.extxyz", atoms, format="extxyz")
    ase.io.write(tmp_path / "d.json", atoms, format="json")
    (tmp_path / "notes.txt").write_text("not a structure\n")
    (tmp_path / "labels.csv").write_text(
        "name,energy,phase\na.cif,-1.5,cubic\nPOSCAR_b,-2.5,tetragonal\nc,,cubic\nd,x,cubic\n"
    )
    entries = list(iter_entries(tmp_path))
    assert [(e.id, e.fmt) for e in entries] == [
        ("a", "cif-file"),
        ("POSCAR_b", "poscar-file"),
        ("c", "ase-file"),
        ("d", "ase-file"),
    ]
    assert entries[0].labels == {"energy": -1.5} and entries[0].metadata == {"phase": "cubic"}
    good, bad = split(list(read_records(tmp_path, targets=["energy"])))
    assert [r.id for r in good] == ["a", "POSCAR_b"]
    assert {b.id: b.reason for b in bad} == {
        "c": "label 'energy' is missing (labels.csv row 3)",
        "d": "label 'energy' is not a number: 'x' (labels.csv row 4)",
    }
    good, bad = split(list(read_records(tmp_path)))
    assert not bad and len(good) == 4
    for record in good:
        assert len(record.structure) == len(real_structure)
        assert np.allclose(
            record.structure.lattice.matrix, real_structure.lattice.matrix, atol=1e-5
        )


def test_folder_file_with_several_frames_is_an_error(
    tmp_path: Path, real_structure: Structure
) -> None:
    atoms = AseAtomsAdaptor.get_atoms(real_structure)
    ase.io.write(tmp_path / "traj.extxyz", [atoms, atoms], format="extxyz")
    (_, bad) = split(list(read_records(tmp_path)))
    assert len(bad) == 1
    assert str(bad[0]) == (
        f"{tmp_path / 'traj.extxyz'}: 2 frames in one file of a folder: read the file on its own "
        "to get one entry per frame"
    )


# ---- single structure files -----------------------------------------------------------------


def test_single_poscar_and_cif_files(samples: Path) -> None:
    poscar = samples / "jarvis_poscar" / "POSCAR-JVASP-10.vasp"
    (entry,) = iter_entries(poscar)
    assert (entry.id, entry.fmt, entry.source, entry.frame) == (
        "POSCAR-JVASP-10",
        "poscar-file",
        str(poscar),
        None,
    )
    record = parse_entry(entry)
    assert len(record.structure) == 3
    assert np.allclose(record.structure.lattice.c, 6.220805465667012)

    cif = samples / "cgcnn_regression" / "1000041.cif"
    (record,) = read_records(cif)
    assert record.id == "1000041" and record.structure.composition.reduced_formula == "NaCl"


def test_multi_block_cif_file(tmp_path: Path, data_dir: Path) -> None:
    cifs = read_cifs(data_dir / "perovskites.csv.gz", 2)
    path = tmp_path / "two.cif"
    path.write_text(cifs[0][1] + cifs[1][1])
    entries = list(iter_entries(path))
    assert [e.id for e in entries] == ["two:0", "two:1"]
    assert [e.source for e in entries] == [f"{path}:data block 0", f"{path}:data block 1"]
    records = [parse_entry(e) for e in entries]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [Structure.from_str(text, fmt="cif") for _, text in cifs]
    assert [r.structure for r in records] == expected


def test_a_block_that_is_not_utf8_spoils_only_itself(tmp_path: Path, data_dir: Path) -> None:
    cifs = read_cifs(data_dir / "perovskites.csv.gz", 3)
    path = tmp_path / "three.cif"
    latin1 = cifs[2][1].replace("data_", "data_\n_publ_author_name 'M\xfcller'\n", 1)
    path.write_bytes((cifs[0][1] + cifs[1][1]).encode() + latin1.encode("latin-1"))
    entries = list(iter_entries(path))
    assert len(entries) == 3
    assert [len(parse_entry(e).structure) for e in entries[:2]] == [5, 5]
    with pytest.raises(CrystalInputError, match=r"data block 2: not UTF-8 text: byte 0xfc"):
        parse_entry(entries[2])


def test_one_unreadable_extxyz_frame_is_skipped_alone(
    tmp_path: Path, real_structure: Structure
) -> None:
    frames = []
    for k in range(4):
        atoms = AseAtomsAdaptor.get_atoms(real_structure)
        atoms.info = {"energy_per_atom": -1.0 - k}
        frames.append(atoms)
    path = tmp_path / "md.extxyz"
    ase.io.write(path, frames, format="extxyz")
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().isdigit()]
    fields = lines[starts[2] + 2].split()
    fields[1] = "abc"  # frame 2: a coordinate that is no number
    lines[starts[2] + 2] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    entries = list(iter_entries(path, targets=["energy_per_atom"]))
    assert [e.id for e in entries] == [f"md:{k}" for k in range(4)]
    assert [e.error is None for e in entries] == [True, True, False, True]
    assert "unreadable frame" in entries[2].error
    assert entries[3].labels == {"energy_per_atom": -4.0}
    for k in (0, 1, 3):
        assert np.allclose(parse_entry(entries[k]).structure.cart_coords, frames[k].positions)
    # a count line that is no count (or negative) ends the frames found: the rest is named, once
    for count in ("abc", "-2"):
        broken = lines[: starts[3]] + [count] + lines[starts[3] :]
        path.write_text("\n".join(broken) + "\n")
        entries = list(iter_entries(path, targets=["energy_per_atom"]))
        assert len(entries) == 4 and [e.error is None for e in entries] == [
            True,
            True,
            False,
            False,
        ]
        assert "no atom count" in entries[3].error
        # the good frames are read from their own text: the file as a whole breaks ase.io.read
        for k in (0, 1):
            assert np.allclose(parse_entry(entries[k]).structure.cart_coords, frames[k].positions)


def test_extxyz_frames(tmp_path: Path, real_structure: Structure) -> None:
    frames = []
    for k in range(3):
        atoms = AseAtomsAdaptor.get_atoms(real_structure)
        atoms.rattle(0.01, seed=k)
        atoms.info = {"energy_per_atom": -1.0 - k, "phase": "ortho"}
        frames.append(atoms)
    path = tmp_path / "md.extxyz"
    ase.io.write(path, frames, format="extxyz")
    entries = list(iter_entries(path, targets=["energy_per_atom"]))
    assert [e.id for e in entries] == ["md:0", "md:1", "md:2"]
    assert [e.source for e in entries] == [f"{path}:frame {k}" for k in range(3)]
    assert [e.labels for e in entries] == [{"energy_per_atom": -1.0 - k} for k in range(3)]
    assert entries[0].metadata == {"phase": "ortho"}
    records = [parse_entry(e) for e in entries]
    for record, atoms in zip(records, frames, strict=True):
        assert np.allclose(record.structure.cart_coords, atoms.positions, atol=1e-6)
    with pytest.raises(CrystalInputError, match="md.extxyz: unknown target.*'energy_per_atom'"):
        list(iter_entries(path, targets=["band_gap"]))


def test_extxyz_energy_from_the_comment_line(tmp_path: Path, real_structure: Structure) -> None:
    """extxyz ``energy=`` goes into an ASE calculator on reading: it is a label all the same."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = AseAtomsAdaptor.get_atoms(real_structure)
    atoms.calc = SinglePointCalculator(atoms, energy=-123.5)
    path = tmp_path / "relaxed.xyz"
    ase.io.write(path, atoms, format="extxyz")
    assert "energy=-123.5" in path.read_text()
    (record,) = read_records(path, targets=["energy"])
    assert isinstance(record, CrystalRecord)
    assert record.id == "relaxed" and record.labels["energy"] == -123.5


def test_ase_db_rows(tmp_path: Path, real_structure: Structure) -> None:
    path = tmp_path / "crystals.db"
    atoms = AseAtomsAdaptor.get_atoms(real_structure)
    with ase.db.connect(path) as database:
        database.write(atoms, band_gap=1.25, source_name="hoip")
        database.write(atoms, band_gap=2.5, source_name="hoip")
        database.write(atoms, source_name="hoip")  # no band gap
    entries = list(iter_entries(path))
    assert [e.id for e in entries] == ["crystals:1", "crystals:2", "crystals:3"]
    assert entries[0].labels == {"band_gap": 1.25}
    assert entries[0].metadata == {"source_name": "hoip"}
    assert entries[0].fmt == "ase-db" and entries[0].source == f"{path}:row 1"
    good, bad = split(list(read_records(path, targets=["band_gap"])))
    assert [r.labels["band_gap"] for r in good] == [1.25, 2.5]
    assert str(bad[0]) == f"{path}:row 3: label 'band_gap' is missing"
    assert len(good[0].structure) == len(real_structure)


def test_single_ase_json_file(samples: Path) -> None:
    path = samples / "ase_json" / "14816.json"
    (entry,) = iter_entries(path)
    assert entry.id == "14816" and entry.fmt == "ase-db"
    assert len(parse_entry(entry).structure) == 10


def test_single_pymatgen_json_file(tmp_path: Path, real_structure: Structure) -> None:
    path = tmp_path / "s.json"
    path.write_text(real_structure.to_json())
    (record,) = read_records(path)
    assert record.id == "s" and record.structure == real_structure


# ---- parse_entry errors ---------------------------------------------------------------------


def test_parse_entry_errors(tmp_path: Path, data_dir: Path) -> None:
    text = read_cifs(data_dir / "perovskites.csv.gz", 1)[0][1]
    entry = RawEntry(
        id="x", source="mem.csv:row 7", payload=text, fmt="cif-text", labels={}, metadata={}
    )
    assert len(parse_entry(entry).structure) == 5

    def reason(**changes: object) -> str:
        with pytest.raises(CrystalInputError) as info:
            parse_entry(dataclasses.replace(entry, **changes))
        assert info.value.source == str(changes.get("source", entry.source))
        return info.value.reason

    assert reason(error="label 'y' is missing") == "label 'y' is missing"
    assert reason(payload="garbage").startswith("unparsable CIF: no structure found")
    assert reason(payload="data_x\n_cell_length_a 3\n").startswith("unparsable CIF: missing field")
    assert reason(
        payload=text.replace(
            "Rh0  1  0.00000000  0.00000000  0.00000000  1", "Rh0  1  0  0  0  0.25"
        )
    ) == ("partial occupancy on site 1 (Rh0.25): disordered structures are not supported")
    assert reason(fmt="poscar-text", payload="garbage\n1\n").startswith("unparsable POSCAR")
    assert reason(fmt="pymatgen-json", payload='{"a": 1}').startswith("unparsable pymatgen JSON")
    missing = tmp_path / "gone.cif"
    assert (
        reason(fmt="cif-file", payload=str(missing), source=str(missing))
        == f"no such file: {missing}"
    )
    bad_poscar = tmp_path / "POSCAR"
    bad_poscar.write_text("not\na\nposcar\n")
    assert reason(fmt="poscar-file", payload=str(bad_poscar)).startswith("unparsable POSCAR")
    bad_xyz = tmp_path / "bad.xyz"
    bad_xyz.write_text("3\n\nH 0 0\n")
    assert reason(fmt="ase-file", payload=str(bad_xyz)).startswith("unreadable structure file")
    molecule_xyz = tmp_path / "water.xyz"
    ase.io.write(molecule_xyz, Atoms("H2O", positions=[[0, 0, 0], [0, 0, 1], [0, 1, 0]]))
    assert reason(fmt="ase-file", payload=str(molecule_xyz)).startswith("no periodic cell")


def test_bad_single_files_give_bad_records(tmp_path: Path, data_dir: Path) -> None:
    text = read_cifs(data_dir / "perovskites.csv.gz", 1)[0][1]
    path = tmp_path / "disordered.cif"
    path.write_text(
        text.replace("N2  1  0.50000000  0.00000000  0.50000000  1", "N2  1  0.5  0.0  0.5  0.9")
    )
    (bad,) = read_records(path)
    assert isinstance(bad, BadRecord)
    assert str(bad) == (
        f"{path}: partial occupancy on site 4 (N0.9): disordered structures are not supported"
    )
    path = tmp_path / "broken.cif"
    path.write_text("data_broken\nloop_\n_foo\n")
    (bad,) = read_records(path)
    assert isinstance(bad, BadRecord) and bad.source == str(path) and "unparsable CIF" in bad.reason


def test_raw_entries_pickle(data_dir: Path, samples: Path) -> None:
    entries = list(iter_entries(samples / "cgcnn_regression"))[:2]
    entries.append(next(iter(iter_entries(data_dir / "hoip.csv.gz"))))
    for entry in entries:
        copy = pickle.loads(pickle.dumps(entry))
        assert copy == entry
        assert parse_entry(copy).structure == parse_entry(entry).structure


# ---- Python objects -------------------------------------------------------------------------


def test_records_from_structures(real_structure: Structure, monkeypatch) -> None:
    atoms = AseAtomsAdaptor.get_atoms(real_structure)
    cluster = Atoms("Pt2", positions=[[5, 5, 5], [7, 5, 5]], cell=[12, 12, 12], pbc=False)
    objects = [real_structure, IStructure.from_sites(real_structure), atoms, cluster]
    monkeypatch.setattr(readers, "_warned_non_periodic", False)
    with pytest.warns(UserWarning, match=r"structures\[3\]: ASE Atoms with pbc=\[False"):
        records = records_from_structures(
            objects, ids=["s", "i", "a", "c"], labels={"y": [1, 2, 3, 4.5]}
        )
    with warnings.catch_warnings():  # once per process, not once per structure
        warnings.simplefilter("error")
        records_from_structures([cluster])
    assert [r.id for r in records] == ["s", "i", "a", "c"]
    assert [r.labels for r in records] == [{"y": 1.0}, {"y": 2.0}, {"y": 3.0}, {"y": 4.5}]
    assert [r.source for r in records] == [f"structures[{k}]" for k in range(4)]
    assert all(type(r.structure) is Structure for r in records)
    assert records[0].structure == real_structure and records[0].structure is not real_structure
    assert records[1].structure == real_structure
    assert np.allclose(records[2].structure.cart_coords, real_structure.cart_coords)
    assert all(records[3].structure.lattice.pbc)
    assert [r.id for r in records_from_structures([real_structure] * 2)] == ["0", "1"]


def test_records_from_structures_errors(real_structure: Structure) -> None:
    no_cell = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    with pytest.raises(CrystalInputError, match=r"structures\[1\]: no periodic cell"):
        records_from_structures([real_structure, no_cell])
    with pytest.raises(CrystalInputError, match=r"structures\[0\]: a pymatgen Molecule"):
        records_from_structures([Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]])])
    with pytest.raises(CrystalInputError, match=r"structures\[0\]: expected a pymatgen Structure"):
        records_from_structures(["POSCAR"])
    with pytest.raises(CrystalInputError, match="ids: 1 ids for 2 structures"):
        records_from_structures([real_structure] * 2, ids=["a"])
    with pytest.raises(CrystalInputError, match=r"labels\['y'\]: 3 values for 2 structures"):
        records_from_structures([real_structure] * 2, labels={"y": [1, 2, 3]})
    disordered = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(CrystalInputError, match=r"partial occupancy on site 0 \(Fe0.5 Co0.5\)"):
        records_from_structures([disordered])
    with pytest.raises(CrystalInputError, match=r"structures\[0\]: no atoms"):
        records_from_structures([Structure(Lattice.cubic(4), [], [])])


def test_cif_column_is_read_as_cif_and_bad_poscar_is_explained(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,cif,y\na,garbage without a block,1.0\n")
    (entry,) = list(iter_entries(table))
    with pytest.raises(CrystalInputError, match="row 1: unparsable CIF"):
        parse_entry(entry)
    poscar = tmp_path / "POSCAR"
    poscar.write_text("comment\n1.0\n1 0\n")
    (entry,) = list(iter_entries(poscar))
    with pytest.raises(CrystalInputError, match="unparsable POSCAR: expected a comment line"):
        parse_entry(entry)


def _frames_with(info: list[dict]) -> list[Atoms]:
    frames = []
    for k, extra in enumerate(info):
        atoms = Atoms("Na", positions=[[0, 0, 0]], cell=[3.0 + 0.1 * k] * 3, pbc=True)
        atoms.info.update(extra)
        frames.append(atoms)
    return frames


def test_frames_take_their_ids_from_ase_info(tmp_path: Path) -> None:
    path = tmp_path / "traj.extxyz"
    ase.io.write(path, _frames_with([{"material_id": "mp-2"}, {"material_id": "mp-1"}]))
    assert [e.id for e in iter_entries(path)] == ["mp-2", "mp-1"]
    # repeated or partly missing ids: positions, as before
    for info in ([{"name": "a"}, {"name": "a"}], [{"name": "a"}, {}]):
        ase.io.write(path, _frames_with(info))
        assert [e.id for e in iter_entries(path)] == ["traj:0", "traj:1"]
    # a key chosen by the caller; an ASE database's key-value pairs count too
    ase.io.write(path, _frames_with([{"tag": "x"}, {"tag": "y"}]))
    assert [e.id for e in iter_entries(path, id_key="tag")] == ["x", "y"]
    with pytest.raises(CrystalInputError, match="no 'label' in the info of any frame.*found: tag"):
        list(iter_entries(path, id_key="label"))
    # a frame without the key is a bad entry, named by its position; the others keep their ids
    ase.io.write(path, _frames_with([{"tag": "x"}, {}, {"tag": "z"}]))
    entries = list(iter_entries(path, id_key="tag"))
    assert [(e.id, e.error) for e in entries] == [
        ("x", None),
        ("traj:1", "no 'tag' in the info of this frame (id_key='tag')"),
        ("z", None),
    ]
    database = tmp_path / "rows.db"
    with ase.db.connect(database) as db:
        for atoms, key in zip(_frames_with([{}, {}]), ("jvasp-7", "jvasp-9"), strict=True):
            db.write(atoms, jid=key)
    assert [e.id for e in iter_entries(database)] == ["jvasp-7", "jvasp-9"]


def test_non_periodic_atoms_warning_says_how_close_the_images_are(monkeypatch) -> None:
    from ase.build import molecule

    methane = molecule("CH4")
    methane.cell = [4.0, 4.0, 4.0]
    methane.center()
    assert readers.image_gap(methane) == pytest.approx(4.0 - np.ptp(methane.positions[:, 0]))
    monkeypatch.setattr(readers, "_warned_non_periodic", False)
    with pytest.warns(UserWarning, match=r"periodic images are 2\.74 Å away") as caught:
        structure = readers.atoms_to_structure(methane, "ch4")
    assert "atoms.center(vacuum=" in str(caught[0].message)
    assert all(structure.lattice.pbc)  # treated as periodic, as the warning says
    methane.center(vacuum=8.0)
    assert readers.image_gap(methane) == pytest.approx(16.0)
    methane.pbc = True
    assert readers.image_gap(methane) == math.inf


def test_non_periodic_atoms_built_in_python_warn_too(monkeypatch) -> None:
    from crystaltwins.io.memory import as_source

    cluster = Atoms("Pt2", positions=[[5, 5, 5], [7, 5, 5]], cell=[12, 12, 12], pbc=False)
    monkeypatch.setattr(readers, "_warned_non_periodic", False)
    with pytest.warns(UserWarning, match="treated as periodic"), as_source([cluster]) as source:
        assert source.path.exists() and not source.skipped


def test_a_non_periodic_structure_file_warns_once(data_dir, monkeypatch) -> None:
    """The parsers' own warnings are silenced, ours is not: a file of a cluster in a box says
    so (once), and reading it does not use up the warning silently."""
    from crystaltwins.io import read_records

    monkeypatch.setattr(readers, "_warned_non_periodic", False)
    folder = data_dir / "samples" / "ase_json"
    with pytest.warns(readers.NonPeriodicWarning, match="treated as periodic") as caught:
        records = list(itertools.islice(read_records(folder), 3))
    assert len(records) == 3
    assert sum(issubclass(w.category, readers.NonPeriodicWarning) for w in caught) == 1
