"""Crystals built in Python as a data source: one bad item never stops the others."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from pymatgen.core import Lattice, Molecule, Structure

from crystaltwins.io.memory import as_source
from crystaltwins.io.readers import read_records
from crystaltwins.io.records import CrystalInputError, CrystalRecord


def rocksalt() -> Structure:
    return Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (None, "no structure (an empty cell)"),
        (math.nan, "no structure (an empty cell)"),
        (Molecule(["C", "O"], [[0, 0, 0], [1.1, 0, 0]]), "a Molecule (no periodic cell)"),
        (3, "not a crystal: a int"),
    ],
)
def test_a_bad_dataframe_row_is_skipped_and_named(bad: object, reason: str) -> None:
    frame = pd.DataFrame({"id": ["a", "b", "c"], "structure": [rocksalt(), bad, rocksalt()]})
    with as_source(frame) as source:
        records = list(read_records(source.path))
        assert [(s.id, s.source) for s in source.skipped] == [("b", "DataFrame row b")]
        assert reason in source.skipped[0].reason
    assert [r.id for r in records if isinstance(r, CrystalRecord)] == ["a", "c"]


def test_a_list_skips_what_is_no_crystal_but_refuses_paths_and_lists_without_one() -> None:
    with as_source([rocksalt(), None, rocksalt()]) as source:
        assert [s.source for s in source.skipped] == ["item 1"]
    refusals = [
        ([rocksalt(), "POSCAR"], "item 1 of the list is a str"),  # a path: read its file
        ([None, None], "item 0 of the list is a NoneType"),  # no crystal at all
    ]
    for items, message in refusals:
        with pytest.raises(CrystalInputError, match=f"expected a path.*{message}"):
            as_source(items).__enter__()


def test_crystals_in_memory_are_saved_as_a_data_file_for_training(tmp_path) -> None:
    """``ct.finetune(df, ...)`` (also pretrain and featurize with a list or a Structure) failed
    with an ``OSError`` printing the whole DataFrame as a file name: a run records its data's
    path. Refused in one line that names ``ct.save_crystals``, which writes the file."""
    import crystaltwins as ct

    frame = pd.DataFrame(
        {"structure": [rocksalt(), None, rocksalt()], "e_form": [1.0, 2.0, 3.0]},
        index=["a", "b", "c"],
    )
    for call in (
        lambda: ct.finetune(frame, "e_form", tmp_path / "run", from_scratch=True),
        lambda: ct.pretrain([rocksalt()], tmp_path / "pre"),
        lambda: ct.featurize(rocksalt(), tmp_path / "cache"),
    ):
        with pytest.raises(ValueError, match=r"save_crystals\(crystals, 'crystals.csv'\)") as no:
            call()
        assert "\n" not in str(no.value) and len(str(no.value)) < 400
    assert not any(tmp_path.iterdir())  # nothing started
    path, skipped = ct.save_crystals(frame, tmp_path / "crystals.csv")
    records = [r for r in read_records(path, targets=["e_form"]) if isinstance(r, CrystalRecord)]
    assert [(r.id, r.labels["e_form"]) for r in records] == [("a", 1.0), ("c", 3.0)]
    assert [b.id for b in skipped] == ["b"]
    with pytest.raises(FileExistsError, match="exists; nothing was written"):
        ct.save_crystals(frame, path)


def test_saved_crystals_are_a_file_every_reader_reads(tmp_path) -> None:
    """``save_crystals(.., "x.csv.gz")`` wrote plain text under a gzip name ("Not a gzipped
    file"); another extension a file no reader took."""
    import crystaltwins as ct

    path, _ = ct.save_crystals([rocksalt(), rocksalt()], tmp_path / "x.csv.gz")
    assert [r.id for r in read_records(path)] == ["0", "1"]
    with pytest.raises(ValueError, match=r"ending in .csv or .csv.gz; nothing was written"):
        ct.save_crystals([rocksalt()], tmp_path / "x.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv.gz"]


def test_ids_come_from_the_id_column_a_file_would_use_or_the_index() -> None:
    """A DataFrame's ``material_id`` (any id column a CSV file is read by) names its crystals,
    and is not taken for a label; a Series is named by its index, as a DataFrame without one."""
    from crystaltwins.io.memory import _rows

    frame = pd.DataFrame(
        {"Material_ID": ["mp-1", "mp-2"], "structure": [rocksalt(), rocksalt()], "e": [1.0, 2.0]}
    )
    ids, _, labels = _rows(frame)
    assert ids == ["mp-1", "mp-2"] and list(labels) == ["e"]
    assert _rows(frame.drop(columns="Material_ID").set_axis(["x", "y"]))[0] == ["x", "y"]
    series = pd.Series([rocksalt(), rocksalt()], index=["a", "b"])
    assert _rows(series)[0] == ["a", "b"]
    with pytest.raises(CrystalInputError, match="item 0 of the Series is a str"):
        _rows(pd.Series(["POSCAR"], index=["a"]))
    assert _rows([rocksalt(), rocksalt()])[0] == ["0", "1"]


def test_a_molecule_is_refused_as_what_it_is_and_a_dict_names_its_crystals() -> None:
    from crystaltwins.io.memory import _rows

    with pytest.raises(CrystalInputError, match=r"not a crystal: a Molecule \(no periodic cell\)"):
        _rows(Molecule(["C", "O"], [[0, 0, 0], [1.1, 0, 0]]))
    ids, items, _ = _rows({"NaCl-a": rocksalt(), 7: rocksalt()})
    assert ids == ["NaCl-a", "7"] and len(items) == 2
    with pytest.raises(CrystalInputError, match="item 0 of the dict is a str"):
        _rows({"a": "POSCAR"})


def test_a_duplicate_id_names_the_users_rows_not_a_temporary_file() -> None:
    frame = pd.DataFrame({"id": ["a", "a"], "structure": [rocksalt(), rocksalt()]})
    with as_source(frame) as source:
        bad = [b for b in read_records(source.path) if not isinstance(b, CrystalRecord)]
        (renamed,) = [source.rename(b) for b in bad]
    assert renamed.source == "DataFrame row a"
    assert renamed.reason == "duplicate id 'a' (also at an earlier DataFrame row)"


def test_structures_with_repeated_site_labels_give_no_pymatgen_warning() -> None:
    """Structures from many sources carry labels such as ``Na`` on every sodium site: writing
    the temporary CIF must not warn once per crystal."""
    import warnings

    crystal = Structure(
        Lattice.cubic(4.2),
        ["Na", "Na", "Cl"],
        [[0, 0, 0], [0.5, 0, 0], [0.5] * 3],
        labels=["Na1", "Na1", "Cl1"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with as_source([crystal]) as source:
            assert not source.skipped
    assert not [w for w in caught if "Site labels" in str(w.message)]
