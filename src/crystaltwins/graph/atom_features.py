"""Element feature vectors for CGCNN-style crystal graphs.

CGCNN (Xie & Grossman, PRL 120, 145301 (2018), Supplementary Table 1) describes each element by
nine properties, each one-hot encoded into categories or bins, 92 numbers in all. The vectors are
shipped as ``atom_init.json`` (atomic number as a string → list of 92 numbers).
:class:`AtomFeaturizer` reads such a file (:meth:`AtomFeaturizer.from_json`) or derives the same
encoding from element data (:meth:`AtomFeaturizer.builtin`).

Layout of the builtin encoding (the same index layout as CGCNN's ``atom_init.json``):

=====================  =======  ==========================================================
property               indices  categories
=====================  =======  ==========================================================
group                  0–18     0: f-block (La–Yb, Ac–No); 1–18: group 1–18
period                 19–25    period 1–7
electronegativity      26–35    Pauling, 10 bins over 0.5–4.0
covalent radius        36–45    Pyykkö single-bond radius, 10 bins over 25–250 pm
valence electrons      46–57    1–12
first ionization E     58–67    10 bins of ln(E / eV) over 1.3–3.3
electron affinity      68–77    10 bins over −3.0–3.7 eV
block                  78–81    s, p, d, f
atomic volume          82–91    10 bins of ln(V / cm³ mol⁻¹) over 1.5–4.3
=====================  =======  ==========================================================

Bins are right-closed (a value on an edge falls into the lower bin) and values outside the range
fall into the first or last bin. A property with no data leaves its block all zeros.

Data: pymatgen's ``Element`` (group, row, block, Pauling ``X``, first ionization energy,
electron affinity, electronic structure for the valence count, molar mass over the density of
the solid or else the molar volume) and Pyykkö's covalent radii, which pymatgen lacks. The
builtin vectors equal the published ``atom_init.json`` for 54 of its 100 elements; the others
differ where pymatgen's electronegativity, electron affinity or volume data differ from CGCNN's
sources (see ``tests/graph/test_atom_features.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from crystaltwins.io.records import CrystalInputError

__all__ = [
    "BUILTIN_MAX_Z",
    "BUILTIN_NAME",
    "PROPERTY_BLOCKS",
    "AtomFeaturizer",
    "builtin_properties",
    "default_featurizer",
    "featurizer_for",
]

BUILTIN_NAME = "builtin-cgcnn-v1"
"""Name of the encoding derived by :meth:`AtomFeaturizer.builtin`."""

BUILTIN_MAX_Z = 100
"""Largest atomic number the builtin encoding covers (H–Fm, as CGCNN's file)."""

_STATE_FORMAT = "crystaltwins.atom_features/1"

# (name, number of categories), in the order of the feature vector.
_LAYOUT: tuple[tuple[str, int], ...] = (
    ("group", 19),
    ("period", 7),
    ("electronegativity", 10),
    ("covalent_radius", 10),
    ("valence_electrons", 12),
    ("first_ionization_energy", 10),
    ("electron_affinity", 10),
    ("block", 4),
    ("atomic_volume", 10),
)


def _blocks() -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    start = 0
    for name, size in _LAYOUT:
        out[name] = (start, start + size)
        start += size
    return out


PROPERTY_BLOCKS: dict[str, tuple[int, int]] = _blocks()
"""Property name → ``(start, stop)`` slice of the builtin feature vector."""

_NUM_BUILTIN_FEATURES = sum(size for _, size in _LAYOUT)

# Bin edges (np.linspace) of the binned properties: (low, high, number of bins).
_EDGES: dict[str, np.ndarray] = {
    "electronegativity": np.linspace(0.5, 4.0, 11),
    "covalent_radius": np.linspace(25.0, 250.0, 11),
    "first_ionization_energy": np.linspace(1.3, 3.3, 11),
    "electron_affinity": np.linspace(-3.0, 3.7, 11),
    "atomic_volume": np.linspace(1.5, 4.3, 11),
}

_BLOCK_LETTERS = ("s", "p", "d", "f")

# Single-bond covalent radii in pm, Z = 1..100: P. Pyykkö, M. Atsumi, Chem. Eur. J. 15, 186
# (2009), Table 2. pymatgen has no covalent radii (its "atomic radius calculated" are Clementi's
# orbital radii, missing for many heavy elements); CGCNN's covalent-radius block follows these.
_PYYKKO_RADII_PM: tuple[int, ...] = (
    32, 46, 133, 102, 85, 75, 71, 63, 64, 67,  # 1-10
    155, 139, 126, 116, 111, 103, 99, 96, 196, 171,  # 11-20
    148, 136, 134, 122, 119, 116, 111, 110, 112, 118,  # 21-30
    124, 121, 121, 116, 114, 117, 210, 185, 163, 154,  # 31-40
    147, 138, 128, 125, 125, 120, 128, 136, 142, 140,  # 41-50
    140, 136, 133, 131, 232, 196, 180, 163, 176, 174,  # 51-60
    173, 172, 168, 169, 168, 167, 166, 165, 164, 170,  # 61-70
    162, 152, 146, 137, 131, 129, 122, 123, 124, 133,  # 71-80
    144, 144, 151, 145, 147, 142, 223, 201, 186, 175,  # 81-90
    169, 170, 171, 172, 166, 166, 168, 168, 165, 167,  # 91-100
)  # fmt: skip


def _finite(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _valence_electrons(structure: str, block: str) -> int:
    """Valence electrons from a pymatgen electronic structure such as ``"[Xe].4f14.5d10.6s2"``.

    Counts the electrons outside the noble-gas core in the subshells that make the element's
    valence: s and p for the s and p blocks (a filled d or f shell below them is core), s and d
    for the d block, and s only for the f block (CGCNN gives every lanthanide and actinide 2).
    """
    kinds = {"s": "sp", "p": "sp", "d": "sd", "f": "s"}[block]
    count = 0
    for token in structure.split("."):
        if token.startswith("["):
            continue
        # token: principal number, subshell letter, occupation, e.g. "4f14".
        letter_at = next(i for i, ch in enumerate(token) if ch.isalpha())
        if token[letter_at] in kinds:
            count += int(token[letter_at + 1 :])
    return count


def _bin(value: float | None, edges: np.ndarray) -> int | None:
    """Index of the right-closed bin of ``edges`` holding ``value``, clipped to the range."""
    if value is None:
        return None
    index = int(np.searchsorted(edges, value, side="left")) - 1
    return min(max(index, 0), len(edges) - 2)


def _atomic_volume(el: Any) -> float | None:
    """Molar volume in cm³/mol: molar mass over the density of the solid, else pymatgen's
    tabulated molar volume (the elements with no solid density: gases, Hg, Am, Es)."""
    density = _finite(el.data.get("Density of solid"))  # kg/m³
    if density is not None and density > 0:
        return float(el.atomic_mass) / (density / 1000.0)
    return _finite(el.data.get("Molar volume"))


def builtin_properties(z: int) -> dict[str, Any]:
    """The element properties behind the builtin encoding of element ``z`` (``None``: no data).

    Keys are those of :data:`PROPERTY_BLOCKS`; units as in the module docstring (ionization
    energy, electron affinity in eV, radius in pm, volume in cm³/mol, before taking logs).
    """
    from pymatgen.core.periodic_table import Element

    if not 1 <= z <= BUILTIN_MAX_Z:
        raise ValueError(f"the builtin encoding covers Z = 1..{BUILTIN_MAX_Z}, got {z}")
    el = Element.from_Z(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every missing value
        # Helium's only electrons are 1s: s block (pymatgen puts it with the p-block noble gases).
        block = "s" if z == 2 else str(el.block)
        ea = _finite(el.data.get("Electron affinity"))
        return {
            # Lanthanides and actinides (pymatgen's f block: La–Yb, Ac–No) have no group.
            "group": 0 if block == "f" else int(el.group),
            "period": int(el.row),
            "electronegativity": _finite(el.X),
            "covalent_radius": float(_PYYKKO_RADII_PM[z - 1]),
            "valence_electrons": _valence_electrons(el.electronic_structure, block),
            "first_ionization_energy": _finite(el.ionization_energy),
            # A negative value is an estimate for an unbound anion: no affinity category.
            "electron_affinity": ea if ea is not None and ea >= 0 else None,
            "block": block,
            "atomic_volume": _atomic_volume(el),
        }


def _builtin_vector(z: int) -> np.ndarray:
    props = builtin_properties(z)
    index: dict[str, int | None] = {
        "group": props["group"],
        "period": props["period"] - 1,
        "valence_electrons": props["valence_electrons"] - 1,
        "block": _BLOCK_LETTERS.index(props["block"]),
    }
    for name in ("electronegativity", "covalent_radius", "electron_affinity"):
        index[name] = _bin(props[name], _EDGES[name])
    for name in ("first_ionization_energy", "atomic_volume"):
        value = props[name]
        index[name] = _bin(math.log(value) if value else None, _EDGES[name])
    vector = np.zeros(_NUM_BUILTIN_FEATURES, dtype=np.float32)
    for name, (start, stop) in PROPERTY_BLOCKS.items():
        i = index[name]
        if i is None:
            continue
        if not 0 <= i < stop - start:
            raise ValueError(f"element {z}: {name} category {i} outside 0..{stop - start - 1}")
        vector[start + i] = 1.0
    return vector


@lru_cache(maxsize=1)
def _builtin_table() -> np.ndarray:
    table = np.zeros((BUILTIN_MAX_Z + 1, _NUM_BUILTIN_FEATURES), dtype=np.float32)
    for z in range(1, BUILTIN_MAX_Z + 1):
        table[z] = _builtin_vector(z)
    table.setflags(write=False)
    return table


class AtomFeaturizer:
    """Element → feature vector lookup.

    Row ``Z`` of :attr:`table` is element ``Z``'s features; row 0 is all zeros (a masked atom).

    :param table: ``(max_z + 1, n_features)`` array, converted to float32; row 0 must be zeros.
    :param name: where the encoding comes from, e.g. ``"atom_init.json:1a2b3c4d5e6f"`` or
        ``"builtin-cgcnn-v1"``.
    """

    table: np.ndarray
    name: str

    def __init__(self, table: np.ndarray, name: str) -> None:
        table = np.array(table, dtype=np.float32)  # a private copy
        if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 1:
            raise ValueError(f"table must be (max_z + 1, n_features), got shape {table.shape}")
        if not np.isfinite(table).all():
            raise ValueError("table holds non-finite values")
        if np.any(table[0] != 0):
            raise ValueError("row 0 (masked atom) of the table must be all zeros")
        table.setflags(write=False)
        self.table = table
        self.name = name

    def __repr__(self) -> str:
        return (
            f"AtomFeaturizer(name={self.name!r}, max_z={self.max_z}, "
            f"num_features={self.num_features})"
        )

    @classmethod
    def from_json(cls, path: str | Path) -> AtomFeaturizer:
        """Read a CGCNN ``atom_init.json`` (atomic number as a string → list of numbers).

        Values are kept bit-exact (as float32, the precision the model uses); elements missing
        from the file get zero rows.

        :raises CrystalInputError: (a :class:`ValueError`) naming the file, when it cannot be read
            or its content is not such a mapping.
        """
        path = Path(path)
        source = str(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CrystalInputError(source, f"cannot read atom features: {exc}") from exc
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CrystalInputError(source, f"not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not data:
            raise CrystalInputError(
                source, "expected a non-empty JSON object mapping atomic numbers to lists"
            )
        rows: dict[int, list[float]] = {}
        width: int | None = None
        for key, values in data.items():
            try:
                z = int(key)
            except ValueError:
                z = -1
            if z < 1 or str(z) != key:
                raise CrystalInputError(source, f"key {key!r} is not an atomic number >= 1")
            if not isinstance(values, list) or not values:
                raise CrystalInputError(source, f"element {key}: expected a non-empty list")
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            ):
                raise CrystalInputError(source, f"element {key}: values must be finite numbers")
            if width is None:
                width = len(values)
            elif len(values) != width:
                raise CrystalInputError(
                    source, f"element {key}: {len(values)} values, other elements have {width}"
                )
            if z in rows:
                raise CrystalInputError(source, f"element {z} appears twice")
            rows[z] = values
        assert width is not None
        table = np.zeros((max(rows) + 1, width), dtype=np.float32)
        with np.errstate(over="ignore"):
            for z, values in rows.items():
                table[z] = np.asarray(values, dtype=np.float32)
        if not np.isfinite(table).all():
            raise CrystalInputError(source, "values beyond the float32 range")
        featurizer = cls(table, name="")
        featurizer.name = f"{path.name}:{featurizer.fingerprint()[:12]}"
        return featurizer

    @classmethod
    def builtin(cls) -> AtomFeaturizer:
        """The CGCNN encoding derived from element data (pymatgen and Pyykkö radii), Z 1..100."""
        return cls(_builtin_table(), name=BUILTIN_NAME)

    @classmethod
    def from_state(cls, state: dict) -> AtomFeaturizer:
        """Rebuild from :meth:`state`; checks the stored fingerprint.

        :raises ValueError: when the state is malformed or its fingerprint does not match.
        """
        try:
            if state.get("format") != _STATE_FORMAT:
                raise ValueError(f"unknown format {state.get('format')!r}")
            featurizer = cls(np.asarray(state["table"], dtype=np.float32), str(state["name"]))
            expected = state["fingerprint"]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid atom featurizer state: {exc}") from exc
        if featurizer.fingerprint() != expected:
            raise ValueError(
                f"atom featurizer state {featurizer.name!r}: table does not match its fingerprint"
            )
        return featurizer

    def state(self) -> dict:
        """Plain-Python description (str, int and float lists only; safe for ``weights_only``)."""
        return {
            "format": _STATE_FORMAT,
            "name": self.name,
            "table": self.table.tolist(),
            "fingerprint": self.fingerprint(),
        }

    @property
    def max_z(self) -> int:
        """Largest atomic number with a row in the table."""
        return self.table.shape[0] - 1

    @property
    def num_features(self) -> int:
        """Length of one element's feature vector."""
        return int(self.table.shape[1])

    def supports(self, z: int) -> bool:
        """Whether element ``z`` has features (its row exists and is not all zeros)."""
        return 1 <= z <= self.max_z and bool(np.any(self.table[z] != 0))

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the table's shape and little-endian float32 bytes.

        Two featurizers with the same fingerprint encode every element identically, whatever
        their names; a checkpoint stores it to check the encoding it was trained with.
        """
        digest = hashlib.sha256(f"{self.table.shape[0]}x{self.table.shape[1]}:".encode())
        digest.update(np.ascontiguousarray(self.table, dtype="<f4").tobytes())
        return digest.hexdigest()


def default_featurizer(source_dir: Path | None) -> AtomFeaturizer:
    """``source_dir/atom_init.json`` when that file exists, else :meth:`AtomFeaturizer.builtin`."""
    if source_dir is not None:
        path = Path(source_dir) / "atom_init.json"
        if path.is_file():
            return AtomFeaturizer.from_json(path)
    return AtomFeaturizer.builtin()


def featurizer_for(
    source: str | os.PathLike | None, atom_init: str | os.PathLike | None = None
) -> AtomFeaturizer:
    """The element features of a run on ``source``, by one rule: ``atom_init`` when given,
    else the ``atom_init.json`` of a CGCNN folder ``source``, else :meth:`AtomFeaturizer.builtin`.
    (A pre-trained model brings its own: the model layer applies that rule first.)"""
    if atom_init:
        return AtomFeaturizer.from_json(atom_init)
    folder = Path(source) if source is not None and Path(source).is_dir() else None
    return default_featurizer(folder)
