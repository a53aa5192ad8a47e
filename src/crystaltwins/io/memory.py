"""Crystals built in Python (pymatgen ``Structure``, ASE ``Atoms``, lists of them, a pandas
``DataFrame`` with a structure column) as a temporary data source that every reader reads."""

from __future__ import annotations

import csv
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystaltwins.io.records import BadRecord, CrystalInputError

#: Column names taken as the structure column of a DataFrame, in this order.
STRUCTURE_COLUMNS = ("structure", "structures", "atoms", "cif")


def is_path(data: Any) -> bool:
    return isinstance(data, (str, os.PathLike))


def _is_crystal(obj: Any) -> bool:
    from pymatgen.core import IStructure

    if isinstance(obj, IStructure):
        return True
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        return False
    return isinstance(obj, Atoms)


def _not_a_crystal(obj: Any) -> str:
    """Why ``obj`` is no crystal, in a few words."""
    if obj is None or (isinstance(obj, float) and math.isnan(obj)):
        return "no structure (an empty cell)"
    hint = " (no periodic cell)" if type(obj).__name__ in ("Molecule", "IMolecule") else ""
    return f"not a crystal: a {type(obj).__name__}{hint}"


def _cif(obj: Any) -> str:
    """The CIF text of one crystal (a DataFrame's CIF text as it is).

    :raises CrystalInputError: ``obj`` is no crystal, or has no CIF."""
    if isinstance(obj, str):
        return obj  # a DataFrame's CIF text
    if not _is_crystal(obj):
        raise CrystalInputError("data", _not_a_crystal(obj))
    from pymatgen.io.cif import CifWriter

    from crystaltwins.io.readers import atoms_to_structure

    structure = obj if not hasattr(obj, "get_positions") else atoms_to_structure(obj, "Atoms")
    try:
        with warnings.catch_warnings():  # pymatgen warns of every Structure built without labels
            warnings.filterwarnings("ignore", message="Site labels are not unique")
            return str(CifWriter(structure, significant_figures=12))
    except Exception as error:  # noqa: BLE001 - one crystal's failure is reported, never raised
        raise CrystalInputError("data", f"no CIF could be written ({error})") from error


def _rows(data: Any) -> tuple[list[str], list[Any], dict[str, list[Any]]]:
    """(ids, structures, label columns) of in-memory data."""
    if _is_crystal(data):
        return ["0"], [data], {}
    if type(data).__name__ in ("Molecule", "IMolecule"):  # iterable (its sites), but one object
        raise CrystalInputError("data", _not_a_crystal(data))
    if hasattr(data, "columns") and hasattr(data, "index"):  # a pandas DataFrame
        column = next((c for c in STRUCTURE_COLUMNS if c in data.columns), None)
        if column is None:
            raise CrystalInputError(
                "DataFrame",
                f"no structure column (one of {', '.join(STRUCTURE_COLUMNS)}); "
                f"columns: {list(data.columns)}",
            )
        from crystaltwins.io.readers import ID_COLUMN_NAMES

        # the id column a CSV file would be read by (id, material_id, ...), else the index
        named = {str(c).lower(): c for c in data.columns}
        id_column = next((named[n] for n in ID_COLUMN_NAMES if n in named), None)
        ids = [str(i) for i in (data[id_column] if id_column is not None else data.index)]
        labels = {
            str(c): list(data[c])
            for c in data.columns
            if c not in (column, id_column) and str(c) not in ("cif",)
        }
        return ids, list(data[column]), labels
    if isinstance(data, dict):  # {id: crystal}
        names, items = list(data), list(data.values())
    else:  # a pandas Series is named by its index, anything else by position
        items = list(data)
        series = hasattr(data, "index") and hasattr(data, "to_frame")
        names = list(data.index) if series else list(range(len(items)))
    _check_items(data, items)
    return [str(n) for n in names], items, {}


def _check_items(data: Any, items: list[Any]) -> None:
    """Refuse a collection that is the wrong kind of input: a path among the items, or no
    crystal at all."""
    # A path among the items, or no crystal at all, is a wrong kind of input; other items that
    # are no crystal (None, a Molecule) are skipped one by one, as bad rows of a file are.
    wrong = next((k for k, s in enumerate(items) if is_path(s)), None)
    if wrong is None and not any(_is_crystal(s) for s in items):
        wrong = next((k for k, s in enumerate(items) if not _is_crystal(s)), None)
    if wrong is not None:
        kind = type(items[wrong]).__name__
        raise CrystalInputError(
            "data",
            "expected a path, a pymatgen Structure, an ASE Atoms, a list of them or a DataFrame "
            f"with a structure column; item {wrong} of the {type(data).__name__} is a {kind}"
            + (
                " (a list of files: give their folder, or read them first)"
                if is_path(items[wrong])
                else ""
            ),
        )


@dataclass
class MemorySource:
    """In-memory crystals as a data source: ``path`` (the temporary CSV, or the path given) and
    the crystals that could not be written to it (``skipped``, named by their id: the list
    position or the DataFrame's id)."""

    path: Path
    skipped: list[BadRecord] = field(default_factory=list)
    #: what an id names: ``"item"`` of a list, ``"DataFrame row"``
    kind: str = "item"
    #: the ids of all the crystals given, in their order (written or skipped; empty for a path)
    ids: list[str] = field(default_factory=list)

    def rename(self, bad: BadRecord) -> BadRecord:
        """A reader's record of the temporary CSV, named as the user's data instead."""
        if not bad.source.startswith(str(self.path)):
            return bad
        # the temporary file's rows mean nothing to the user (e.g. a duplicate id's first row)
        reason = re.sub(
            re.escape(str(self.path)) + r"(:row \d+)?", f"an earlier {self.kind}", bad.reason
        )
        return BadRecord(bad.id, f"{self.kind} {bad.id}", reason)


@contextmanager
def as_source(data: Any) -> Iterator[MemorySource]:
    """``data`` itself when it is a path; else a temporary CSV (id, CIF, labels) of the crystals,
    removed on exit. The CIFs keep 12 significant figures. A crystal that has no CIF (an
    ``Atoms`` without a cell, ...) is left out and listed; one bad crystal never fails the
    others.

    :raises CrystalInputError: no crystal at all, or none usable."""
    if is_path(data):
        yield MemorySource(Path(data))
        return
    ids, structures, labels = _rows(data)
    kind = "DataFrame row" if hasattr(data, "columns") else "item"
    if not ids:
        raise CrystalInputError("data", "no crystals given")
    with tempfile.TemporaryDirectory(prefix="crystaltwins-") as tmp:
        source = MemorySource(Path(tmp) / "structures.csv", kind=kind, ids=list(ids))
        with open(source.path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "cif", *labels])
            for k, (crystal_id, structure) in enumerate(zip(ids, structures, strict=True)):
                try:
                    cif = _cif(structure)
                except CrystalInputError as error:
                    source.skipped.append(
                        BadRecord(crystal_id, f"{kind} {crystal_id}", error.reason)
                    )
                    continue
                writer.writerow([crystal_id, cif, *(labels[c][k] for c in labels)])
        if len(source.skipped) == len(ids):
            raise CrystalInputError(
                "data",
                f"none of the {len(ids)} crystals could be used; the first: {source.skipped[0]}",
            )
        yield source


def save_crystals(data: Any, path: str | os.PathLike) -> tuple[Path, list[BadRecord]]:
    """Write crystals built in Python (a pymatgen ``Structure`` or ASE ``Atoms``, a list of
    them, or a ``DataFrame`` with a structure column, its other columns labels) to the CSV
    ``path`` (id, cif, labels; ``.csv``, or ``.csv.gz`` compressed), the data source
    ``featurize``, ``pretrain`` and ``finetune`` take. Written atomically; an existing file is
    never replaced.

    :returns: the file, and the crystals left out (no CIF could be written for them).
    :raises FileExistsError: ``path`` exists. :raises CrystalInputError: no usable crystal."""
    import gzip
    import shutil

    from crystaltwins.io.atomic import atomic_path

    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".csv", ".csv.gz")):
        raise ValueError(f"{path}: give a name ending in .csv or .csv.gz; nothing was written")
    if path.exists():
        raise FileExistsError(f"{path}: exists; nothing was written; give a new file name")
    with as_source(data) as source, atomic_path(path) as tmp:
        if name.endswith(".gz"):
            with open(source.path, "rb") as src, gzip.open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(source.path, tmp)
    return path, source.skipped


def check_data_path(data: Any, command: str) -> None:
    """Refuse in one line crystals given to ``command`` as Python objects where a data file is
    needed (a run records its data's path, to resume and to be read again)."""
    items = data if isinstance(data, (list, tuple)) else [data]
    if items and all(is_path(item) for item in items):
        return
    raise ValueError(
        f"{command} takes data files or folders (a run records their paths), not crystals in "
        f"memory ({type(data).__name__}); write them first with "
        "crystaltwins.save_crystals(crystals, 'crystals.csv') (a DataFrame's other columns "
        "become label columns)"
    )
