"""Readers: any supported structure source → :class:`RawEntry` → :class:`CrystalRecord`.

Reading happens in two steps so that the expensive one can run in worker processes:

1. :func:`iter_entries` walks a data source and yields one cheap, picklable :class:`RawEntry`
   per crystal (the CIF text of a CSV row, or the path of a structure file, plus its labels);
   it reads label tables but does not parse structures (except to count the frames of a
   single multi-frame file).
2. :func:`parse_entry` turns one entry into a :class:`~crystaltwins.io.records.CrystalRecord`
   (a pymatgen ``Structure``), or raises :class:`~crystaltwins.io.records.CrystalInputError`
   naming the file (and row) and the problem.

:func:`read_records` chains both and reports bad entries as
:class:`~crystaltwins.io.records.BadRecord`; :func:`records_from_structures` wraps pymatgen
``Structure`` and ASE ``Atoms`` objects built in Python.

Supported sources (detected from the path):

* a CSV file (``.csv``, optionally ``.gz``/``.bz2``/``.xz`` compressed) with a header and a CIF
  column (named ``cif`` or ``structure``, or given with ``cif_column``); an ``id`` column
  (``id``, ``material_id``, ``mp_id``, ``mpid``, ``jid``, ``name``) gives the ids, other columns
  are labels (numeric) or metadata (text). Rows are numbered from 1 (the first row after the
  header is ``row 1``).
* a folder of structure files (CIF, POSCAR/CONTCAR/``*.vasp``, extxyz/xyz, ASE JSON, ...) with an
  optional label table ``id_prop.csv``, ``targets.csv`` or ``labels.csv``: its first column is
  the file name or stem, the other columns labels; it has no header when the second field of its
  first row is a number, and its label columns are then named ``target`` (one) or ``target_0``,
  ``target_1``, ... (several). The CGCNN layout (``id_prop.csv`` + ``<id>.cif`` +
  ``atom_init.json``) is one case of it. Each file of a folder is one crystal (the first data
  block of a CIF file).
* a single structure file: CIF (one entry per data block), POSCAR, extxyz and any other format
  ``ase.io.read`` reads (one entry per frame), an ASE database (``.db``, or ASE's ``.json``; one
  entry per row, labels from the row's ``key_value_pairs``). Entries of a file with several
  frames get the ids ``"<stem>:<K>"`` (``K`` = frame index from 0, or the row id of a database).

Lengths are in Å throughout (pymatgen's and ASE's unit); label values keep the units of the
source file.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import itertools
import json
import lzma
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from pymatgen.core import IStructure, Molecule, Structure

from crystaltwins.io.cif import CifParseError, parse_cif_fast, parse_cif_p1, split_cif_blocks
from crystaltwins.io.records import BadRecord, CrystalInputError, CrystalRecord

__all__ = [
    "GENERIC_LABEL",
    "LABEL_TABLE_NAMES",
    "RawEntry",
    "find_atom_init",
    "is_generic_label",
    "iter_entries",
    "parse_entry",
    "read_records",
    "records_from_structures",
]

#: Label tables recognised in a folder of structure files, in order of preference.
LABEL_TABLE_NAMES: tuple[str, ...] = ("id_prop.csv", "targets.csv", "labels.csv")
#: Column names (case-insensitive) holding the structure text in a CSV file.
CIF_COLUMN_NAMES: tuple[str, ...] = ("cif", "structure")
#: Column names (case-insensitive) holding the crystal id in a CSV file.
ID_COLUMN_NAMES: tuple[str, ...] = ("id", "material_id", "mp_id", "mpid", "jid", "name")

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_CIF_SUFFIXES = frozenset({".cif", ".mcif"})
_POSCAR_SUFFIXES = frozenset({".vasp", ".poscar"})
_POSCAR_PREFIXES = ("POSCAR", "CONTCAR")
_DB_SUFFIXES = frozenset({".db"})
#: File suffixes taken as structure files when scanning a folder (others are ignored).
_FOLDER_SUFFIXES = frozenset(
    {".cif", ".mcif", ".vasp", ".poscar", ".json", ".xyz", ".extxyz", ".traj", ".xsf", ".res"}
)
_NON_STRUCTURE_FILES = frozenset({"atom_init.json", *LABEL_TABLE_NAMES})
_PEEK_ROWS = 200
GENERIC_LABEL = "target"  # the label of a table without a header (a CGCNN folder's id_prop.csv)
_MAX_REASON = 300


def is_generic_label(name: str) -> bool:
    """Whether ``name`` is a name given to a label column without a header (``target``,
    ``target_0``, ...), so says nothing about the property."""
    return re.fullmatch(rf"{GENERIC_LABEL}(_\d+)?", name) is not None


@dataclass(frozen=True)
class RawEntry:
    """One crystal of a data source, not parsed yet: cheap and picklable.

    :param id: identifier, unique within the source (CSV id, file stem, ``stem:K``).
    :param source: where it is, for error reports: ``"/path/mp36k.csv.gz:row 17"``,
        ``"/path/POSCAR-JVASP-1.vasp"``, ``"/path/traj.xyz:frame 3"``.
    :param payload: the structure text for CSV sources; a file path for file-based sources.
    :param fmt: how to read ``payload``: ``"cif-text"``, ``"poscar-text"``, ``"pymatgen-json"``,
        ``"xyz-text"``, ``"extxyz-text"`` (text formats) or ``"cif-file"``, ``"poscar-file"``,
        ``"ase-file"`` (any file ``ase.io.read`` reads, ASE/pymatgen JSON included),
        ``"ase-db"`` (file formats).
    :param labels: numeric labels by column name (units of the source); NaN where empty.
    :param metadata: non-numeric column values (formula, split, ...), as text.
    :param error: set when the entry is already known to be unusable (a target label missing,
        no structure file for a label row, ...); :func:`parse_entry` then raises with it.
    :param frame: which frame / data block / database row id of a multi-frame file; ``None``
        for the only (or, for a CIF file, the first) one.
    """

    id: str
    source: str
    payload: str
    fmt: str
    labels: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    frame: int | None = None


# --------------------------------------------------------------------------------------------
# iter_entries


def iter_entries(
    source: str | os.PathLike,
    targets: Sequence[str] | None = None,
    *,
    cif_column: str | None = None,
    id_key: str | None = None,
) -> Iterator[RawEntry]:
    """Yield one :class:`RawEntry` per crystal of ``source`` (layout detected from the path).

    Entries come in source order (CSV rows; label-table rows then unlisted files of a folder;
    frames of a file). Ids are unique within a source: a repeated id makes the later entries
    bad ("duplicate id ...").

    :param source: a CSV file with a CIF column, a folder of structure files (CGCNN layout
        included) or a single structure file; see the module docstring.
    :param targets: label columns the caller needs. Entries whose target label is missing or not
        a number get :attr:`RawEntry.error` set (they are still yielded, in order).
    :param cif_column: name of the structure column of a CSV file (default: ``cif`` or
        ``structure``).
    :param id_key: for a single structure file (extxyz, ASE database, ...): the ``Atoms.info``
        (or key-value) entry holding each frame's id. By default a file of several frames takes
        its ids from the first of ``id``, ``material_id``, ``mp_id``, ``mpid``, ``jid``, ``name``
        that every frame has with no value repeated, else ``<stem>:<frame>``. With ``id_key``, a
        frame without it is a bad entry (id ``<stem>:<frame>``); no frame with it is an error.
        Other sources ignore it.
    :raises CrystalInputError: (when iteration starts) for a missing path, an unknown file format,
        an empty CSV file, a CSV file without CIF column, a folder without structure files, or a
        target that is not a column of the source; the message names the path and lists the
        available columns where that helps.
    """
    path = Path(source)
    targets = list(targets or [])
    if not path.exists():
        raise CrystalInputError(str(path), "no such file or folder")
    if path.is_dir():
        entries = _iter_folder(path, targets)
    elif _is_csv(path):
        entries = _iter_csv(path, targets, cif_column)
    else:
        entries = _iter_structure_file(path, targets, id_key)
    first_seen: dict[str, str] = {}  # the first usable entry of each id (a bad one claims none)
    for entry in entries:
        if entry.error is None:
            where = first_seen.setdefault(entry.id, entry.source)
            if where != entry.source:
                entry = replace(entry, error=f"duplicate id {entry.id!r} (also at {where})")
        yield entry


def check_target_columns(
    source: str | os.PathLike, targets: Sequence[str], cif_column: str | None = None
) -> None:
    """Refuse now, before any graph is built, a CSV source without one of the ``targets``
    columns, or whose first rows hold no number in one (text such as ``2.16 eV`` or ``True``:
    every crystal would be skipped); other sources are checked as they are read. Its header and
    first :data:`_PEEK_ROWS` rows are read.

    :raises CrystalInputError: as :func:`iter_entries` would."""
    path = Path(source)
    if not (targets and path.is_file() and _is_csv(path)):
        return
    entries = list(
        itertools.islice(
            iter_entries(path, targets=list(targets), cif_column=cif_column), _PEEK_ROWS
        )
    )
    for target in targets:
        if any(math.isfinite(e.labels.get(target, math.nan)) for e in entries):
            continue
        text = [e.error for e in entries if e.error and f"label '{target}' is not a" in e.error]
        if text:  # only text (or inf), no number: not a column of labels as it is written
            example = text[0].split(": ", 1)[1]
            raise CrystalInputError(
                str(path),
                f"the column {target!r} holds no number in its first {len(entries)} rows (e.g. "
                f"{example}); write labels as plain numbers, without units (classes as 0 and 1)",
            )


def _is_csv(path: Path) -> bool:
    return _strip_compression(path.name.lower()).endswith((".csv", ".tsv"))


def _strip_compression(name: str) -> str:
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open_text(path: Path, errors: str = "strict") -> IO[str]:
    """``path`` (optionally compressed) as UTF-8 text; ``errors="surrogateescape"`` turns bytes
    that are not UTF-8 into lone surrogates (U+DC80-U+DCFF) instead of raising, so that one bad
    row of a CSV file can be found and skipped (:func:`_undecodable`)."""
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rt", encoding="utf-8-sig", errors=errors, newline="")  # type: ignore[operator]
    return open(path, encoding="utf-8-sig", errors=errors, newline="")


def _read_text(path: Path, errors: str = "strict") -> str:
    with _open_text(path, errors) as handle:
        return handle.read()


def _allow_long_fields() -> None:
    """CIF texts of large cells exceed the csv module's default field limit (128 kB)."""
    if csv.field_size_limit() < 2**31 - 1:
        csv.field_size_limit(2**31 - 1)


#: Label fields that mean "no value" (NaN), as spreadsheets and pandas write them. Case matters:
#: ``Na`` (sodium) is text.
MISSING_VALUE_MARKERS: frozenset[str] = frozenset(
    {"N/A", "n/a", "NA", "#N/A", "NaN", "nan", "null", "NULL", "None", "none", "-", "?"}
)


def _parse_label(value: str) -> float | None:
    """The number in a label field (NaN for an empty field or a missing-value marker such as
    ``N/A``); ``None`` if it is not a number."""
    text = value.strip()
    if not text or text in MISSING_VALUE_MARKERS:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def _numeric_columns(rows: Iterable[Sequence[str]], columns: Sequence[int]) -> set[int]:
    """Column indices holding numbers: most of their non-empty values (in ``rows``) are numbers.

    A column with no value at all counts as numeric (all NaN). Values of a numeric column that
    are not numbers become NaN (or an error when the column is a requested target).
    """
    numbers = dict.fromkeys(columns, 0)
    texts = dict.fromkeys(columns, 0)
    for row in rows:
        for k in columns:
            if k < len(row) and row[k].strip():
                number = _parse_label(row[k])
                if number is None:
                    texts[k] += 1
                elif not math.isnan(number):  # a missing-value marker counts for neither
                    numbers[k] += 1
    return {k for k in columns if numbers[k] >= texts[k]}


def _target_error(name: str, value: str | None) -> str | None:
    """Why a target label value is unusable (``None`` when it is a finite number)."""
    if value is None or not value.strip():
        return f"label '{name}' is missing"
    number = _parse_label(value)
    if number is None:
        return f"label '{name}' is not a number: {value.strip()!r}"
    if math.isnan(number):
        return f"label '{name}' is missing"
    if math.isinf(number):
        return f"label '{name}' is not a finite number: {value.strip()!r}"
    return None


def _split_labels(
    row: Sequence[str],
    names: Sequence[str],
    indices: Sequence[int],
    numeric: set[int],
    targets: Sequence[str],
) -> tuple[dict[str, float], dict[str, str], str | None]:
    """Labels, metadata and the first target problem of one table row."""
    labels: dict[str, float] = {}
    metadata: dict[str, str] = {}
    for name, k in zip(names, indices, strict=True):
        value = row[k] if k < len(row) else ""
        if k in numeric:
            number = _parse_label(value)
            labels[name] = math.nan if number is None else number
        else:
            metadata[name] = value
    error = None
    for name in targets:
        k = indices[names.index(name)]
        error = _target_error(name, row[k] if k < len(row) else None)
        if error is not None:
            break
    return labels, metadata, error


def _check_targets(where: Path, targets: Sequence[str], available: Sequence[str]) -> None:
    unknown = [t for t in targets if t not in available]
    if unknown:
        listed = ", ".join(repr(c) for c in available) if available else "none"
        raise CrystalInputError(
            str(where),
            f"unknown target column(s) {', '.join(repr(t) for t in unknown)}; "
            f"available columns: {listed}",
        )


def _text_format(text: str, cif_column: bool = False) -> str:
    """How to parse a structure given as text: JSON, CIF, else POSCAR (a column named like
    ``cif`` holds CIF)."""
    head = text.lstrip()[:1]
    if head == "{":
        return "pymatgen-json"
    if cif_column or "data_" in text or "_cell_length_a" in text:
        return "cif-text"
    return "poscar-text"


# ---- CSV with a structure column ------------------------------------------------------------


def _undecodable(row: Sequence[str], header: Sequence[str]) -> str | None:
    """Why a row read with ``errors="surrogateescape"`` is not UTF-8 text (``None`` if it is).

    Undecodable bytes come back as lone surrogates U+DC80-U+DCFF (byte = code point - 0xDC00),
    which ``str.encode("utf-8")`` rejects: that check runs at C speed on every field.
    """
    for k, value in enumerate(row):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(value[exc.start])
            byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a surrogate"
            column = repr(header[k]) if k < len(header) else f"{k + 1}"
            return f"not UTF-8 text: {byte} in column {column} (character {exc.start + 1})"
    return None


def _csv_rows(
    reader: Iterator[list[str]], header: Sequence[str]
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """``(row number, fields, None)`` per readable row, ``(row number, None, reason)`` per row
    that cannot be read (not UTF-8, a csv error such as a field over the size limit).

    Rows are numbered from 1 (the first row after the header); a bad row keeps its number and
    the rows after it are still read. A file that ends early (a truncated gzip stream) gives one
    last bad row saying so.
    """
    number = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield number, None, f"unreadable CSV row: {exc}"
            continue
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            yield number + 1, None, f"the file cannot be read from here on: {_short(exc)}"
            return
        number += 1
        problem = _undecodable(row, header)
        yield (number, None, problem) if problem else (number, row, None)


def _csv_numeric_columns(path: Path, delimiter: str, columns: Sequence[int]) -> set[int]:
    """:func:`_numeric_columns` over every readable row of a CSV file (a second, streaming pass:
    a column's type depends on all its values, not on the first rows)."""
    with _open_text(path, errors="surrogateescape") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None) or []
        rows = (row for _, row, _ in _csv_rows(reader, header) if row is not None)
        return _numeric_columns(rows, columns)


def _iter_csv(path: Path, targets: list[str], cif_column: str | None) -> Iterator[RawEntry]:
    _allow_long_fields()
    with _open_text(path, errors="surrogateescape") as handle:
        delimiter = "\t" if _strip_compression(path.name.lower()).endswith(".tsv") else ","
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
            raise CrystalInputError(str(path), f"unreadable CSV file: {exc}") from exc
        if header is None or not any(h.strip() for h in header):
            raise CrystalInputError(str(path), "empty CSV file (no header row)")
        problem = _undecodable(header, [])
        if problem is not None:
            raise CrystalInputError(str(path), f"header row {problem.replace('column ', 'field ')}")
        header = [h.strip() for h in header]
        lower = [h.lower() for h in header]
        columns = ", ".join(repr(h) for h in header)

        if cif_column is not None:
            if cif_column not in header:
                raise CrystalInputError(
                    str(path), f"no column {cif_column!r} (the CIF column); columns: {columns}"
                )
            cif_index = header.index(cif_column)
        else:
            found = [lower.index(n) for n in CIF_COLUMN_NAMES if n in lower]
            if not found:
                if path.name.lower() in LABEL_TABLE_NAMES and _folder_structure_files(path.parent):
                    # A label table of a folder of structure files: read the folder.
                    yield from _iter_folder(path.parent, targets, table=path)
                    return
                raise CrystalInputError(
                    str(path),
                    "no CIF column (expected a column named 'cif' or 'structure'; name yours "
                    f"with --cif-column NAME, or cif_column= in Python); columns: {columns}",
                )
            cif_index = found[0]
        cif_column_named = "cif" in lower[cif_index]
        id_matches = [lower.index(n) for n in ID_COLUMN_NAMES if n in lower]
        id_index = id_matches[0] if id_matches else None
        label_indices = [k for k in range(len(header)) if k not in (cif_index, id_index)]
        label_names = [header[k] for k in label_indices]
        _check_targets(path, targets, label_names)

        numbered = _csv_rows(reader, header)
        peek = list(itertools.islice(numbered, _PEEK_ROWS))
        if not peek:
            raise CrystalInputError(str(path), "empty CSV file (a header but no rows)")
        if len(peek) < _PEEK_ROWS or not label_indices:
            numeric = _numeric_columns((row for _, row, _ in peek if row), label_indices)
        else:  # a column's type is decided from all its values
            numeric = _csv_numeric_columns(path, delimiter, label_indices)
        numeric |= {label_indices[label_names.index(t)] for t in targets}

        n_columns = len(header)
        for row_number, row, problem in itertools.chain(peek, numbered):
            where = f"{path}:row {row_number}"
            if row is None:
                unread = str(row_number) if id_index is None else f"row {row_number}"
                yield RawEntry(id=unread, source=where, payload="", fmt="cif-text", error=problem)
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            entry_id = row[id_index].strip() if id_index is not None and id_index < len(row) else ""
            if not entry_id.isprintable():  # binary junk: name the row by its number
                entry_id = ""
            if id_index is None:  # no id column: every crystal is named by its row
                entry_id = str(row_number)
            elif not entry_id:  # a hole in the id column: a name no real id takes ("3" may)
                entry_id = f"row {row_number}"
            labels, metadata, error = _split_labels(
                row, label_names, label_indices, numeric, targets
            )
            text = row[cif_index] if cif_index < len(row) else ""
            if len(row) != n_columns:
                error = f"has {len(row)} fields, the header has {n_columns}"
            elif not text.strip():
                error = f"empty structure field {header[cif_index]!r}"
            yield RawEntry(
                id=entry_id,
                source=where,
                payload=text,
                fmt=_text_format(text, cif_column_named) if text.strip() else "cif-text",
                labels=labels,
                metadata=metadata,
                error=error,
            )


# ---- folder of structure files --------------------------------------------------------------


def _is_structure_file_name(name: str) -> bool:
    if name.startswith(".") or name in _NON_STRUCTURE_FILES:
        return False
    if name.upper().startswith(_POSCAR_PREFIXES):
        return True
    base = _strip_compression(name.lower())
    return Path(base).suffix in _FOLDER_SUFFIXES


def _folder_structure_files(folder: Path) -> list[Path]:
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in children if p.is_file() and _is_structure_file_name(p.name)]


def _file_id(path: Path) -> str:
    """The id of a structure file: its name without the format (and compression) suffix."""
    name = _strip_compression(path.name)
    if name.upper().startswith(_POSCAR_PREFIXES) and Path(name).suffix.lower() not in (
        _POSCAR_SUFFIXES | _CIF_SUFFIXES
    ):
        return name  # POSCAR, CONTCAR_relaxed, POSCAR.1 ...
    stem = Path(name).stem
    return stem or name


def _file_format(path: Path) -> str:
    name = _strip_compression(path.name)
    suffix = Path(name).suffix.lower()
    if suffix in _CIF_SUFFIXES:
        return "cif-file"
    if suffix in _POSCAR_SUFFIXES or name.upper().startswith(_POSCAR_PREFIXES):
        return "poscar-file"
    if suffix in _DB_SUFFIXES:
        return "ase-db"
    return "ase-file"


def _is_header(first: Sequence[str]) -> bool:
    """Whether the first row of a label table names its columns: its first label is no number
    (a missing-value marker counts as one), or, where that label is empty, it names its id
    column or another column."""
    if len(first) == 1:
        return first[0].lower() in ID_COLUMN_NAMES
    if first[1].strip():
        return _parse_label(first[1]) is None
    if first[0].lower() in ID_COLUMN_NAMES:
        return True
    if _parse_label(first[0]) is not None:  # a number (a CGCNN id) or empty: a data row
        return False
    return any(field.strip() and _parse_label(field) is None for field in first[2:])


def _read_label_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Column names and numbered data rows of a label table (header detected).

    :returns: ``(names, rows)``; ``names[0]`` names the id column; rows are numbered from 1.
    """
    try:
        text = _read_text(path, errors="surrogateescape")  # bad rows are found per row
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise CrystalInputError(str(path), f"unreadable label table: {exc}") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return [], []
    if any("," in line for line in lines[:20]):  # not the first line alone: it may lack a label
        raw = [[field.strip() for field in row] for row in csv.reader(lines)]
    else:  # whitespace- or tab-separated
        raw = [line.split() for line in lines]
    first = raw[0]
    if _is_header(first):
        names, data = first, raw[1:]
    else:
        n_labels = max(len(r) for r in raw) - 1
        generic = [f"{GENERIC_LABEL}_{k}" for k in range(n_labels)]
        names = ["id"] + ([GENERIC_LABEL] if n_labels == 1 else generic)
        data = raw
    return names, list(enumerate(data, start=1))


def _iter_folder(folder: Path, targets: list[str], table: Path | None = None) -> Iterator[RawEntry]:
    files = _folder_structure_files(folder)
    if table is None:
        table = next(
            (folder / n for n in LABEL_TABLE_NAMES if (folder / n).is_file()),
            None,
        )
    if not files:
        raise CrystalInputError(
            str(folder),
            "no structure files found (expected CIF, POSCAR/*.vasp, extxyz, ASE JSON, ... files"
            + (f", as listed in {table.name})" if table is not None else ")"),
        )
    by_name: dict[str, Path] = {}
    for p in files:
        by_name.setdefault(p.name, p)
    for p in files:
        by_name.setdefault(_file_id(p), p)

    if table is None:
        if targets:
            raise CrystalInputError(
                str(folder),
                f"no label table ({', '.join(LABEL_TABLE_NAMES)}) in the folder, so no target "
                f"column {', '.join(repr(t) for t in targets)}; available columns: none",
            )
        for p in files:
            yield RawEntry(id=_file_id(p), source=str(p), payload=str(p), fmt=_file_format(p))
        return

    names, rows = _read_label_table(table)
    label_names = names[1:]
    label_indices = list(range(1, len(names)))
    _check_targets(table, targets, label_names)
    numeric = _numeric_columns((row for _, row in rows), label_indices)
    numeric |= {label_indices[label_names.index(t)] for t in targets}

    seen: dict[Path, int] = {}
    for number, row in rows:
        key = row[0].strip() if row else ""
        where = f"{table}:row {number}"
        problem = _undecodable(row, names)
        if problem is not None:
            yield RawEntry(id=str(number), source=where, payload="", fmt="", error=problem)
            continue
        labels, metadata, error = _split_labels(row, label_names, label_indices, numeric, targets)
        path = (by_name.get(key) or by_name.get(_file_id(Path(key)))) if key else None
        if path is None:
            yield RawEntry(
                id=key or str(number),
                source=where,
                payload="",
                fmt="",
                labels=labels,
                metadata=metadata,
                error=f"no structure file for id {key!r} in {folder}",
            )
            continue
        if path in seen:
            yield RawEntry(
                id=key,
                source=where,
                payload=str(path),
                fmt=_file_format(path),
                labels=labels,
                metadata=metadata,
                error=f"{path.name} is listed twice in {table.name} (rows {seen[path]} and {number})",
            )
            continue
        seen[path] = number
        if error is not None:
            error = f"{error} ({table.name} row {number})"
        yield RawEntry(
            id=_file_id(path),
            source=str(path),
            payload=str(path),
            fmt=_file_format(path),
            labels=labels,
            metadata=metadata,
            error=error,
        )
    for p in files:
        if p in seen:
            continue
        error = None
        if targets:
            error = f"label '{targets[0]}' is missing (the file is not listed in {table.name})"
        yield RawEntry(
            id=_file_id(p), source=str(p), payload=str(p), fmt=_file_format(p), error=error
        )


# ---- single structure file ------------------------------------------------------------------


def _json_kind(path: Path) -> str | None:
    """``"ase-db"`` for an ASE JSON database, ``"pymatgen"`` for a pymatgen dict, else ``None``."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and "ids" in data and "nextid" in data:
        return "ase-db"
    if isinstance(data, dict) and ("@class" in data or "sites" in data):
        return "pymatgen"
    return None


def _info_labels(info: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """Numeric scalars of an ``Atoms.info`` / database ``key_value_pairs`` dict, and the rest."""
    labels: dict[str, float] = {}
    metadata: dict[str, str] = {}
    for key, value in info.items():
        if isinstance(value, bool | int | float):
            labels[key] = float(value)
        elif isinstance(value, str):
            metadata[key] = value
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
            try:
                labels[key] = float(value)
            except (TypeError, ValueError):
                metadata[key] = str(value)
    return labels, metadata


def _atoms_labels(atoms: Any) -> tuple[dict[str, float], dict[str, str]]:
    """Labels of one ASE frame: numeric scalars of ``atoms.info`` and of the calculator results.

    extxyz files put ``energy``, ``free_energy``, ... of the comment line into a calculator
    (eV); they become labels too (``atoms.info`` wins on a name clash).
    """
    labels, metadata = _info_labels(atoms.info)
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    for key, value in _info_labels(results)[0].items():
        labels.setdefault(key, value)
    return labels, metadata


def _frame_entries(
    path: Path,
    fmt: str,
    frames: Sequence[tuple[int, dict[str, float], dict[str, str]]],
    targets: list[str],
    kind: str,
    id_key: str | None = None,
    unreadable: dict[int, str] | None = None,
    texts: Mapping[int, tuple[str, str]] | None = None,
) -> Iterator[RawEntry]:
    """Entries of the frames of one file: ``(frame, labels, metadata)`` each.

    Their ids: the file's stem for a single frame, else ``<stem>:<frame>``, unless the frames
    carry their own ids (see :func:`_frame_ids`). ``unreadable``: why frame ``k`` cannot be
    read, for the frames that cannot (they are yielded with that error, to be skipped).
    ``texts``: frame ``k``'s own text and its format (``"extxyz-text"``), for a file that cannot
    be read again frame by frame (its entries carry that text instead of the path)."""
    available = sorted({k for _, labels, _ in frames for k in labels})
    _check_targets(path, targets, available)
    single = len(frames) == 1
    stem = _file_id(path)
    own_ids = _frame_ids(path, frames, id_key, automatic=not single)
    for k, (frame, labels, metadata) in enumerate(frames):
        error = None
        for t in targets:
            if t not in labels or math.isnan(labels[t]):
                error = f"label '{t}' is missing"
                break
            if math.isinf(labels[t]):
                error = f"label '{t}' is not a finite number: {labels[t]!r}"
                break
        positional = stem if single else f"{stem}:{frame}"
        if unreadable and frame in unreadable:
            error = unreadable[frame]
        elif own_ids is not None and not own_ids[k]:  # only with id_key: named by position
            error = f"no {id_key!r} in the info of this frame (id_key={id_key!r})"
        payload, frame_fmt = (texts or {}).get(frame, (str(path), fmt))
        yield RawEntry(
            id=(own_ids[k] or positional) if own_ids is not None else positional,
            source=str(path) if single else f"{path}:{kind} {frame}",
            payload=payload,
            fmt=frame_fmt,
            labels=labels,
            metadata=metadata,
            error=error,
            frame=None if single and fmt != "ase-db" else frame,
        )


def _frame_value(labels: Mapping[str, float], metadata: Mapping[str, str], key: str) -> str:
    """The text of ``key`` (case-insensitive) in a frame's ``info``: a string, or an integer
    number; ``""`` when absent."""
    for table in (metadata, labels):
        for name, value in table.items():
            if name.lower() != key.lower():
                continue
            if isinstance(value, str):
                return value.strip()
            if isinstance(value, float) and value.is_integer():
                return str(int(value))
    return ""


def _frame_ids(
    path: Path,
    frames: Sequence[tuple[int, dict[str, float], dict[str, str]]],
    id_key: str | None,
    automatic: bool,
) -> list[str] | None:
    """The ids the frames of a file carry in their ASE ``info`` (or database key-value pairs):
    under ``id_key`` when given (``""`` for a frame without one, which is then skipped as a bad
    entry), else, for a file of several frames (``automatic``), under the first of
    :data:`ID_COLUMN_NAMES` that every frame has, with no value repeated. ``None``: use positions
    (``<stem>:<frame>``).

    :raises CrystalInputError: no frame has ``id_key`` (a misspelt key stops before any work,
        like a target that is no column of the source).
    """
    if id_key is not None:
        ids = [_frame_value(labels, metadata, id_key) for _, labels, metadata in frames]
        if not any(ids):
            found = sorted({k for _, labels, metadata in frames for k in (*labels, *metadata)})
            raise CrystalInputError(
                str(path),
                f"no {id_key!r} in the info of any frame (id_key={id_key!r}); "
                f"keys found: {', '.join(found) or 'none'}",
            )
        return ids
    if not automatic:
        return None
    for key in ID_COLUMN_NAMES:
        ids = [_frame_value(labels, metadata, key) for _, labels, metadata in frames]
        if all(ids) and len(set(ids)) == len(ids):
            return ids
    return None


def _iter_structure_file(
    path: Path, targets: list[str], id_key: str | None = None
) -> Iterator[RawEntry]:
    fmt = _file_format(path)
    if fmt == "ase-file" and path.suffix.lower() == ".json":
        kind = _json_kind(path)
        if kind is None:
            raise CrystalInputError(
                str(path),
                "unknown structure file format: a JSON file that is neither an ASE database "
                "nor a pymatgen Structure",
            )
        if kind == "pymatgen":
            yield from _frame_entries(path, fmt, [(0, {}, {})], targets, "frame")
            return
        fmt = "ase-db"
    if fmt == "cif-file":
        try:  # bytes that are not UTF-8 spoil only their own data block (see parse_entry)
            blocks = split_cif_blocks(_read_text(path, "surrogateescape"))
        except (OSError, EOFError) as exc:
            raise CrystalInputError(str(path), f"unreadable file: {exc}") from exc
        frames = [(k, {}, {}) for k in range(max(len(blocks), 1))]
        yield from _frame_entries(path, fmt, frames, targets, "data block")
        return
    if fmt == "poscar-file":
        yield from _frame_entries(path, fmt, [(0, {}, {})], targets, "frame")
        return
    if fmt == "ase-db":
        import ase.db

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = [
                    (row.id, *_info_labels(row.key_value_pairs))
                    for row in ase.db.connect(str(path)).select()
                ]
        except Exception as exc:
            raise CrystalInputError(str(path), f"unreadable ASE database: {_short(exc)}") from exc
        if not rows:
            raise CrystalInputError(str(path), "empty ASE database (no rows)")
        yield from _frame_entries(path, fmt, rows, targets, "row", id_key)
        return

    import ase.io
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    unknown = (
        "unknown structure file format (supported: CSV with a CIF column, CIF, POSCAR/*.vasp, "
        "extxyz, ASE JSON/db and the formats ase.io.read reads)"
    )
    try:
        ase_format = filetype(str(path), read=True, guess=True)
    except Exception as exc:
        raise CrystalInputError(str(path), f"{unknown}: {_short(exc)}") from exc
    if ase_format not in ioformats:
        raise CrystalInputError(str(path), unknown)
    unreadable: dict[int, str] = {}
    texts: dict[int, tuple[str, str]] | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images = ase.io.read(str(path), index=":")
    except UnknownFileTypeError as exc:
        raise CrystalInputError(str(path), f"{unknown}: {_short(exc)}") from exc
    except Exception as exc:
        if ase_format not in ("extxyz", "xyz"):
            raise CrystalInputError(str(path), f"unreadable structure file: {_short(exc)}") from exc
        images, unreadable, chunks = _xyz_frames_one_by_one(path, ase_format)
        # ase.io.read(path, index=k) fails on this file as a whole: each frame keeps its text
        texts = {k: (chunk, f"{ase_format}-text") for k, chunk in chunks.items()}
        if not images or all(atoms is None for atoms in images):
            raise CrystalInputError(str(path), f"unreadable structure file: {_short(exc)}") from exc
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise CrystalInputError(str(path), "no structure in the file")
    frames = [
        (k, *(_atoms_labels(atoms) if atoms is not None else ({}, {})))
        for k, atoms in enumerate(images)
    ]
    yield from _frame_entries(path, fmt, frames, targets, "frame", id_key, unreadable, texts)


def _xyz_frames_one_by_one(
    path: Path, ase_format: str
) -> tuple[list[Any], dict[int, str], dict[int, str]]:
    """The frames of an (ext)xyz file that ``ase.io.read`` cannot read as a whole: split by
    their atom-count lines and read one at a time, ``None`` (and why, in the first dict) for
    each frame that cannot be read, so that one bad frame does not stop the file; the second
    dict holds the text of each frame that was read. A file whose frame layout itself is broken
    (a count line that is no non-negative number) ends the frames there: the rest of the file is
    one unreadable entry, named."""
    import ase.io

    lines = _read_text(path, "replace").splitlines(keepends=True)
    images: list[Any] = []
    unreadable: dict[int, str] = {}
    chunks: dict[int, str] = {}
    start = 0
    while start < len(lines):
        if not lines[start].strip():
            start += 1
            continue
        try:
            count = int(lines[start].split()[0])
        except ValueError:
            count = -1
        if count < 0:  # no frame boundary to go on from: the rest is one unreadable entry, named
            unreadable[len(images)] = (
                f"unreadable from line {start + 1} on: {lines[start].strip()[:40]!r} is no atom "
                "count (the frames after it cannot be found)"
            )
            images.append(None)
            break
        chunk = "".join(lines[start : start + count + 2])
        start += count + 2
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images.append(ase.io.read(io.StringIO(chunk), format=ase_format))
            chunks[len(images) - 1] = chunk
        except Exception as exc:
            unreadable[len(images)] = f"unreadable frame: {_short(exc)}"
            images.append(None)
    return images, unreadable, chunks


# --------------------------------------------------------------------------------------------
# parse_entry


def parse_entry(entry: RawEntry) -> CrystalRecord:
    """Parse one entry into a :class:`CrystalRecord` (pymatgen ``Structure``, Å).

    CIF text and CIF files go through :func:`crystaltwins.io.cif.parse_cif_fast` (same result as
    pymatgen's parser, about 10-30x faster on pymatgen-written P1 CIFs).

    :raises CrystalInputError: ``(entry.source, reason)`` when the entry is unusable: its
        :attr:`RawEntry.error` is set, the text/file cannot be parsed, it has no atoms, partial
        occupancies (disordered structures are not supported), a degenerate cell or non-finite
        coordinates. pymatgen / ASE exceptions never escape; their message is shortened into
        the reason.
    """
    if entry.error is not None:
        raise CrystalInputError(entry.source, entry.error)
    if entry.fmt == "cif-text":
        # Fast path: a structure from parse_cif_p1 is ordered, non-empty, with a proper cell.
        try:
            structure = parse_cif_p1(entry.payload)
        except Exception:  # never trust the fast path with an error: pymatgen decides below
            structure = None
        if structure is not None:
            return _record(entry, structure)
    try:
        with warnings.catch_warnings(record=True) as caught:  # the parsers' noise, not ours
            warnings.simplefilter("always")
            structure = _load_structure(entry)
        for warning in caught:
            if issubclass(warning.category, NonPeriodicWarning):
                warnings.warn(warning.message, NonPeriodicWarning, stacklevel=2)
    except CrystalInputError:
        raise
    except CifParseError as exc:
        raise CrystalInputError(entry.source, f"unparsable CIF: {_short(exc)}") from exc
    except Exception as exc:
        raise CrystalInputError(entry.source, f"{_what(entry.fmt)}: {_short(exc)}") from exc
    _check_structure(structure, entry.source)
    return _record(entry, structure)


def _record(entry: RawEntry, structure: Structure) -> CrystalRecord:
    """The record of ``entry`` with its parsed ``structure`` (labels and metadata copied)."""
    return CrystalRecord(
        id=entry.id,
        structure=structure,
        labels=dict(entry.labels),
        source=entry.source,
        metadata=dict(entry.metadata),
    )


def _what(fmt: str) -> str:
    return {
        "cif-text": "unparsable CIF",
        "cif-file": "unparsable CIF",
        "poscar-text": "unparsable POSCAR",
        "poscar-file": "unparsable POSCAR",
        "pymatgen-json": "unparsable pymatgen JSON",
        "ase-db": "unreadable ASE database row",
    }.get(fmt, "unreadable structure file")


def _short(exc: BaseException | str) -> str:
    text = str(exc) if str(exc) else type(exc).__name__
    if isinstance(exc, BaseException) and not isinstance(
        exc, CifParseError | CrystalInputError | _PoscarError
    ):
        text = f"{type(exc).__name__}: {text}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


class _PoscarError(ValueError):
    """A POSCAR text pymatgen cannot read, explained."""


def _poscar_structure(text: str) -> Structure:
    from pymatgen.io.vasp import Poscar

    try:
        return Poscar.from_str(text, read_velocities=False).structure
    except (IndexError, ValueError) as exc:
        raise _PoscarError(
            "expected a comment line, a scale, 3 lattice vectors, species and counts, then "
            f"coordinates ({_short(exc)})"
        ) from exc


def _load_structure(entry: RawEntry) -> Structure:
    fmt = entry.fmt
    if fmt == "cif-text":
        return parse_cif_fast(entry.payload)
    if fmt == "poscar-text":
        return _poscar_structure(entry.payload)
    if fmt == "pymatgen-json":
        return _structure_from_dict(json.loads(entry.payload), entry.source)
    if fmt in ("xyz-text", "extxyz-text"):  # one frame of a file ASE cannot read as a whole
        import ase.io

        atoms = ase.io.read(io.StringIO(entry.payload), format=fmt.removesuffix("-text"))
        return atoms_to_structure(atoms, entry.source)

    path = Path(entry.payload)
    if not path.is_file():
        raise CrystalInputError(entry.source, f"no such file: {path}")
    if fmt == "cif-file":
        text = _read_text(path, "surrogateescape")
        if entry.frame is not None:
            blocks = split_cif_blocks(text)
            if entry.frame >= len(blocks):
                raise CrystalInputError(entry.source, f"no data block {entry.frame} in {path}")
            text = blocks[entry.frame]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a byte read by surrogateescape
            byte = ord(text[exc.start]) - 0xDC00
            raise CrystalInputError(
                entry.source, f"not UTF-8 text: byte 0x{byte:02x} (character {exc.start + 1})"
            ) from None
        return parse_cif_fast(text)
    if fmt == "poscar-file":
        return _poscar_structure(_read_text(path))
    if fmt == "ase-db":
        import ase.db

        database = ase.db.connect(str(path))
        if entry.frame is None:
            rows = list(database.select(limit=2))
            if len(rows) != 1:
                raise CrystalInputError(
                    entry.source,
                    "an ASE database with several rows in a folder: read the file on its own "
                    "to get one entry per row",
                )
            atoms = rows[0].toatoms()
        else:
            atoms = database.get(id=entry.frame).toatoms()
        return atoms_to_structure(atoms, entry.source)
    if fmt == "ase-file":
        if path.suffix.lower() == ".json":
            data = json.loads(_read_text(path))
            if isinstance(data, dict) and ("@class" in data or "sites" in data):
                return _structure_from_dict(data, entry.source)
        import ase.io

        if entry.frame is not None:
            return atoms_to_structure(ase.io.read(str(path), index=entry.frame), entry.source)
        images = ase.io.read(str(path), index=":")
        images = images if isinstance(images, list) else [images]
        if len(images) != 1:
            raise CrystalInputError(
                entry.source,
                f"{len(images)} frames in one file of a folder: read the file on its own to get "
                "one entry per frame",
            )
        return atoms_to_structure(images[0], entry.source)
    raise CrystalInputError(entry.source, f"unknown entry format {fmt!r}")


def _structure_from_dict(data: Any, source: str) -> Structure:
    if not isinstance(data, dict):
        raise CrystalInputError(source, "the JSON text is not a pymatgen Structure dict")
    if data.get("@class") == "Molecule" or ("sites" in data and "lattice" not in data):
        raise CrystalInputError(source, "a pymatgen Molecule has no periodic cell")
    return Structure.from_dict(data)


_warned_non_periodic = False


class NonPeriodicWarning(UserWarning):
    """ASE ``Atoms`` that are not periodic in every direction were read as a crystal."""


def image_gap(atoms: Any) -> float:
    """Shortest distance (Å) between the atoms of an ASE ``Atoms`` and their periodic images
    across the directions its ``pbc`` flags mark as not periodic: the vacuum its cell leaves
    around it there (negative: the atoms stick out of the cell); ``inf`` if all are periodic."""
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    volume = abs(float(np.linalg.det(cell)))
    fractions = np.linalg.solve(cell.T, np.asarray(atoms.positions, dtype=np.float64).T).T
    gaps = []
    for axis in np.flatnonzero(~np.asarray(atoms.pbc, dtype=bool)):
        others = [a for a in range(3) if a != axis]
        height = volume / float(np.linalg.norm(np.cross(cell[others[0]], cell[others[1]])))
        span = float(np.ptp(fractions[:, axis])) if len(fractions) else 0.0
        gaps.append((1.0 - span) * height)
    return min(gaps) if gaps else math.inf


def _warn_non_periodic_once(source: str, atoms: Any) -> None:
    """Say once per process that ASE ``pbc`` flags are overridden, and how far the structure
    is from its periodic images (datasets of clusters in a box would otherwise warn on every
    structure)."""
    global _warned_non_periodic
    if _warned_non_periodic:
        return
    _warned_non_periodic = True
    warnings.warn(
        f"{source}: ASE Atoms with pbc={atoms.pbc.tolist()} (not periodic) are treated as "
        f"periodic in their cell ({' x '.join(f'{x:.3g}' for x in atoms.cell.lengths())} Å): "
        f"their periodic images are {image_gap(atoms):.3g} Å away, and atoms within the "
        "neighbour radius of an image get it as a neighbour. For an isolated molecule or "
        "cluster, give it more vacuum than the radius (e.g. atoms.center(vacuum=...) in ASE). "
        "This applies to every such structure read in this process.",
        NonPeriodicWarning,
        stacklevel=3,
    )


def atoms_to_structure(atoms: Any, source: str) -> Structure:
    """An ASE ``Atoms`` as a periodic pymatgen ``Structure`` (via ``AseAtomsAdaptor``).

    Atoms with a full cell (three non-coplanar lattice vectors) are taken as periodic in all
    three directions, whatever their ``pbc`` flags (e.g. a cluster in a 20 Å box); the first
    such structure of a process gives a :class:`UserWarning` saying how far its periodic
    images are (:func:`image_gap`).
    """
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    if not isinstance(atoms, Atoms):
        raise CrystalInputError(source, f"expected ASE Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise CrystalInputError(source, "no atoms")
    volume = abs(float(atoms.cell.volume)) if atoms.cell.rank == 3 else 0.0
    if not volume > 1e-8:
        raise CrystalInputError(
            source,
            f"no periodic cell (cell {atoms.cell.cellpar().round(4).tolist()}, pbc "
            f"{atoms.pbc.tolist()}): a crystal needs three lattice vectors",
        )
    if not atoms.pbc.all():
        _warn_non_periodic_once(source, atoms)
    atoms = atoms.copy()  # drops the calculator; keeps arrays (tags, magmoms, ...)
    atoms.pbc = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = AseAtomsAdaptor.get_structure(atoms)
    return structure


def _check_structure(structure: Structure, source: str) -> None:
    """Raise :class:`CrystalInputError` for structures the graph builder cannot use."""
    if len(structure) == 0:
        raise CrystalInputError(source, "no atoms")
    if not structure.is_ordered:
        for index, site in enumerate(structure):
            if not site.is_ordered:
                raise CrystalInputError(
                    source,
                    f"partial occupancy on site {index} ({site.species.formula}): disordered "
                    "structures are not supported",
                )
    volume = float(structure.lattice.volume)
    if not (math.isfinite(volume) and volume > 1e-6):
        raise CrystalInputError(source, f"degenerate cell (volume {volume:.3g} Å^3)")
    if not np.isfinite(structure.frac_coords).all():
        raise CrystalInputError(source, "non-finite atomic coordinates")


# --------------------------------------------------------------------------------------------
# read_records, records_from_structures, find_atom_init


def read_records(
    source: str | os.PathLike,
    targets: Sequence[str] | None = None,
    *,
    cif_column: str | None = None,
) -> Iterator[CrystalRecord | BadRecord]:
    """Read every crystal of ``source``: :func:`iter_entries` then :func:`parse_entry`.

    :param source: see :func:`iter_entries`.
    :param targets: label columns that must be present and numeric.
    :param cif_column: structure column of a CSV file (default ``cif`` / ``structure``).
    :returns: records in source order; unusable entries as :class:`BadRecord` (id, where, why).
    :raises CrystalInputError: for an unreadable source (see :func:`iter_entries`).
    """
    for entry in iter_entries(source, targets, cif_column=cif_column):
        try:
            yield parse_entry(entry)
        except CrystalInputError as exc:
            yield BadRecord(id=entry.id, source=exc.source, reason=exc.reason)


def records_from_structures(
    structures: Iterable[Structure | Any],
    ids: Sequence[str] | None = None,
    labels: Mapping[str, Sequence[float]] | None = None,
) -> list[CrystalRecord]:
    """Records from pymatgen ``Structure`` or ASE ``Atoms`` objects built in Python.

    :param structures: pymatgen ``Structure`` / ``IStructure`` (copied) or ASE ``Atoms``
        (converted with ``AseAtomsAdaptor``; a full cell is required and taken as periodic).
    :param ids: one id per structure (default ``"0"``, ``"1"``, ...).
    :param labels: label name → one value per structure (units are the caller's).
    :returns: one record per structure, sources ``"structures[K]"``.
    :raises CrystalInputError: for an object that is not a periodic crystal (ASE Atoms without
        cell, a Molecule, ...), partial occupancies, no atoms, or ids/labels of the wrong length.
    """
    items = list(structures)
    n = len(items)
    if ids is None:
        id_list = [str(k) for k in range(n)]
    else:
        id_list = [str(i) for i in ids]
        if len(id_list) != n:
            raise CrystalInputError("ids", f"{len(id_list)} ids for {n} structures")
    columns: dict[str, list[float]] = {}
    for name, values in (labels or {}).items():
        values = list(values)
        if len(values) != n:
            raise CrystalInputError(f"labels[{name!r}]", f"{len(values)} values for {n} structures")
        try:
            columns[name] = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise CrystalInputError(f"labels[{name!r}]", f"not a number: {_short(exc)}") from exc

    records = []
    for k, item in enumerate(items):
        source = f"structures[{k}]"
        structure = _to_structure(item, source)
        _check_structure(structure, source)
        records.append(
            CrystalRecord(
                id=id_list[k],
                structure=structure,
                labels={name: values[k] for name, values in columns.items()},
                source=source,
            )
        )
    return records


def _to_structure(item: Any, source: str) -> Structure:
    if isinstance(item, Structure):
        return item.copy()
    if isinstance(item, IStructure):
        return Structure.from_sites(item.sites, properties=item.properties)
    if isinstance(item, Molecule):
        raise CrystalInputError(source, "a pymatgen Molecule has no periodic cell")
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        Atoms = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(item, Atoms):
        return atoms_to_structure(item, source)
    raise CrystalInputError(
        source, f"expected a pymatgen Structure or an ASE Atoms, got {type(item).__name__}"
    )


def find_atom_init(source: str | os.PathLike) -> Path | None:
    """The ``atom_init.json`` (CGCNN element features) that comes with a data source.

    :param source: a CGCNN folder, or a file in it (``id_prop.csv``, a CIF, a CSV file).
    :returns: ``<folder>/atom_init.json`` when it exists, else ``None``.
    """
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    candidate = folder / "atom_init.json"
    return candidate if candidate.is_file() else None
