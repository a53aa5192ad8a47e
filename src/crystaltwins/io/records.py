"""Records: what every reader yields, whatever the file format.

A :class:`CrystalRecord` is one crystal (an id, a pymatgen ``Structure`` and its numeric labels);
a :class:`BadRecord` says which entry of which file could not be used, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pymatgen.core import Structure


class CrystalInputError(ValueError):
    """An input file or entry that cannot be turned into a crystal graph.

    The message always names the file (and row or entry) and the problem.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class CrystalRecord:
    """One crystal ready for graph building.

    :param id: identifier, unique within its data source (file stem, CSV ``id`` column, ...).
    :param structure: the periodic structure (Å).
    :param labels: numeric labels by column name (units as in the source); may be empty.
    :param source: where it came from, e.g. ``"mp36k.csv.gz:row 17"`` (for error reports).
    :param metadata: non-numeric columns (formula, a ``split`` column, ...), as text.
    """

    id: str
    structure: Structure
    labels: dict[str, float] = field(default_factory=dict)
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class BadRecord:
    """An entry that was skipped: its id (when known), where it is, and why."""

    id: str
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"
