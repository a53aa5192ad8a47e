"""Fast CIF parsing for the simple P1 files written by pymatgen's ``CifWriter``.

Every CSV data set of the project stores its crystals as CIF text written by pymatgen's
``CifWriter``: one data block, space group P1 with the single symmetry operation
``'x, y, z'``, the six cell parameters and one ``_atom_site_*`` loop with element symbols,
labels, fractional coordinates and occupancies of 1. pymatgen's general-purpose parser
(``Structure.from_str(text, fmt="cif")``) spends most of its time on machinery these files
do not need (symmetry expansion, site merging, disorder), so :func:`parse_cif_fast` parses
exactly that simple case directly and falls back to pymatgen's ``CifParser`` for anything
else. The result is the same :class:`~pymatgen.core.Structure` as pymatgen's (same lattice
matrix, same site order, same species, same fractional coordinates, same site labels).

What the fast path reproduces from ``pymatgen.io.cif.CifParser`` (``primitive=False``):

* the lattice is ``Lattice.from_parameters(a, b, c, alpha, beta, gamma)`` (Å, degrees);
* fractional coordinates within 1e-4 (relative) of 1/3 or 2/3 are snapped to them
  (``CifParser._sanitize_data``);
* coordinates are wrapped into the unit cell with ``x - floor(x)`` (after applying the identity
  operation, which turns ``-0.0`` into ``0.0``);
* sites are ordered as ``CifParser`` orders them: grouped by composition and then sorted by
  electronegativity (``Structure.get_sorted_structure``), keeping file order within an element;
* site labels are the ``_atom_site_label`` values.

Anything outside the simple case makes the fast path decline (:func:`parse_cif_p1` returns
``None``) and :func:`parse_cif_fast` uses pymatgen instead: symmetry operations other than the
identity, occupancies other than 1, uncertainties such as ``1.234(5)``, missing fields,
symbols that are not plain element symbols (``Fe2+``, ``Wat``, ``D1``), oxidation-state or
magnetic tags, text fields, several data blocks, unknown tags, sites closer than pymatgen's
merge tolerance, or non-ASCII text. Correctness therefore never depends on the fast path.
"""

from __future__ import annotations

import math
import re
import warnings
from functools import cache, lru_cache

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.core.periodic_table import get_el_sp
from pymatgen.core.sites import PeriodicSite
from pymatgen.io.cif import CifParser

__all__ = [
    "CifParseError",
    "parse_cif_fast",
    "parse_cif_p1",
    "parse_cif_pymatgen",
    "split_cif_blocks",
]


class CifParseError(ValueError):
    """pymatgen could not build a structure from a CIF text; the message says why."""


# pymatgen's CIF tokenizer (pymatgen.io.cif.CifBlock._process_string): a token is an unquoted
# word, or a '...' / "..." string whose closing quote is followed by whitespace.
_TOKEN = re.compile(r"""([^'"\s][\S]*)|'(.*?)'(?!\S)|"(.*?)"(?!\S)""")

#: Scalar tags that the fast path accepts; pymatgen does not use them to build the structure
#: when the cell parameters and the symmetry operations are given.
_IGNORED_SCALARS = frozenset(
    {
        "_symmetry_space_group_name_H-M",
        "_symmetry_Int_Tables_number",
        "_symmetry_cell_setting",
        "_space_group_IT_number",
        "_space_group_name_H-M_alt",
        "_space_group_crystal_system",
        "_chemical_formula_structural",
        "_chemical_formula_sum",
        "_chemical_name_common",
        "_chemical_name_systematic",
        "_cell_volume",
        "_cell_formula_units_Z",
        "_audit_creation_method",
        "_audit_creation_date",
    }
)
_CELL_TAGS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
_CELL_SET = frozenset(_CELL_TAGS)
_SYMOP_XYZ_TAGS = frozenset({"_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz"})
_SYMOP_ID_TAGS = frozenset({"_symmetry_equiv_pos_site_id", "_space_group_symop_id"})
_ATOM_REQUIRED = (
    "_atom_site_type_symbol",
    "_atom_site_label",
    "_atom_site_fract_x",
    "_atom_site_fract_y",
    "_atom_site_fract_z",
)
_ATOM_REQUIRED_SET = frozenset(_ATOM_REQUIRED)
# Extra per-site columns are ignored by pymatgen (qmof stores charges, spin densities, ...),
# except for these, which mean magnetic, anisotropic or implicit-hydrogen data.
_ATOM_FORBIDDEN = re.compile(r"moment|magn|aniso|attached_hydrogens|Cartn")
_ALLOWED_SCALARS = _IGNORED_SCALARS | frozenset(_CELL_TAGS)

#: pymatgen's tolerance for merging sites (CifParser ``site_tolerance``), fractional.
_SITE_TOLERANCE = 1e-4
#: Up to this many sites, coordinates are processed in pure Python (cheaper than numpy calls).
_SMALL = 16
#: pymatgen's minimal lattice thickness (Å) below which CifParser refuses the cell.
_MIN_THICKNESS = 0.01


@cache
def _element_info(symbol: str) -> tuple[Element, float, float] | None:
    """The element of a plain element symbol, its Pauling electronegativity and its sort key.

    :returns: ``(element, X, X_for_sorting)`` where ``X`` may be NaN (noble gases, superheavy
        elements) and ``X_for_sorting`` is ``inf`` then (as in ``Element.__lt__``); ``None``
        when ``symbol`` is not exactly an element symbol that pymatgen's CIF parser keeps as is.
    """
    if not (1 <= len(symbol) <= 2) or symbol != symbol.title():
        return None
    if not Element.is_valid_symbol(symbol):
        return None
    try:
        element = get_el_sp(symbol)
    except Exception:
        return None
    if not isinstance(element, Element) or element.symbol != symbol:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = float(element.X)
    return element, x, (math.inf if x != x else x)


@cache
def _composition(symbol: str, float_amount: bool) -> Composition:
    """The (immutable, shareable) one-element composition that CifParser puts on a site.

    :param float_amount: amount ``1.0`` (occupancy read from the file) rather than the integer
        ``1`` (CifParser's default without an occupancy column); the cache key must tell them
        apart since ``1 == 1.0``.
    """
    info = _element_info(symbol)
    assert info is not None
    return Composition({info[0]: 1.0 if float_amount else 1})


class _SiteOrder:
    """Sort key reproducing ``Site.__lt__`` for ordered one-element sites (NaN-aware)."""

    __slots__ = ("x", "symbol")

    def __init__(self, x: float, symbol: str) -> None:
        self.x = x
        self.symbol = symbol

    def __lt__(self, other: _SiteOrder) -> bool:
        if self.x < other.x:
            return True
        if self.x > other.x:
            return False
        return self.symbol < other.symbol


def _scalar_value(line: str) -> str | None:
    """The value of a ``_tag value`` line as pymatgen reads it, or ``None`` when unusual."""
    tokens = _TOKEN.findall(line)
    if len(tokens) != 2:
        return None
    return "".join(tokens[1])


def _thick_enough(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> bool:
    """Whether the cell is at least (twice) pymatgen's minimal thickness along each axis.

    :param a: cell lengths a, b, c (Å) and angles alpha, beta, gamma (degrees).
    """
    if min(a, b, c) <= 0:
        return False
    ca, cb, cg = (math.cos(math.radians(t)) for t in (alpha, beta, gamma))
    sa, sb, sg = (math.sin(math.radians(t)) for t in (alpha, beta, gamma))
    v2 = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg  # (volume / abc) ** 2
    if not v2 > 0:
        return False
    v = math.sqrt(v2)  # interplanar spacings: d_100 = a v / sin(alpha), ...
    return min(a * v / abs(sa), b * v / abs(sb), c * v / abs(sg)) >= 2 * _MIN_THICKNESS


def _is_identity(op: str) -> bool:
    return op.replace(" ", "").lower() == "x,y,z"


def _fractional_coordinates(tokens: list[str], n_sites: int) -> np.ndarray | None:
    """Fractional coordinates as CifParser computes them, or ``None`` to decline.

    :param tokens: all x values, then all y values, then all z values, as text.
    :returns: ``(n_sites, 3)`` array: values snapped to 1/3 and 2/3 as in
        ``CifParser._sanitize_data``, then the identity operation (``-0.0`` becomes ``0.0``) and
        wrapping with ``x - floor(x)``; ``None`` for non-finite values or two sites closer than
        (twice) pymatgen's merge tolerance.
    :raises ValueError: for a value that is not a number.
    """
    if n_sites <= _SMALL:  # pure Python: cheaper than numpy calls for a few atoms
        values = []
        for text in tokens:
            v = float(text)
            if not math.isfinite(v):
                return None
            if 0.3332 < v < 0.6668:  # contains both snapping windows
                if abs(v / (1 / 3) - 1.0) <= 1e-4:
                    v = 1 / 3
                elif abs(v / (2 / 3) - 1.0) <= 1e-4:
                    v = 2 / 3
            v += 0.0
            values.append(v - math.floor(v))
        xs, ys, zs = values[:n_sites], values[n_sites : 2 * n_sites], values[2 * n_sites :]
        if _too_close_small(xs, ys, zs):
            return None
        return np.array([xs, ys, zs], dtype=np.float64).T

    array = np.array(list(map(float, tokens)), dtype=np.float64)
    if not np.isfinite(array).all():
        return None
    # Cheap pre-check: values within 1e-4 of 1/3 or 2/3 (contains both snapping windows).
    if (np.abs(np.abs(array - 0.5) - 1 / 6) < 1e-4).any():
        for ideal in (1 / 3, 2 / 3):
            array[np.abs(array / ideal - 1.0) <= 1e-4] = ideal
    array += 0.0
    array -= np.floor(array)
    frac = array.reshape(3, n_sites).T
    return None if _too_close(frac) else frac


def _too_close_small(xs: list[float], ys: list[float], zs: list[float]) -> bool:
    """:func:`_too_close` for a few sites, in pure Python."""
    tol = 2 * _SITE_TOLERANCE
    for i in range(1, len(xs)):
        xi, yi, zi = xs[i], ys[i], zs[i]
        for j in range(i):
            d = xi - xs[j]
            if abs(d - round(d)) < tol:
                d = yi - ys[j]
                if abs(d - round(d)) < tol:
                    d = zi - zs[j]
                    if abs(d - round(d)) < tol:
                        return True
    return False


def _too_close(frac: np.ndarray) -> bool:
    """Whether two sites are within (twice) pymatgen's merge tolerance, per fractional axis.

    pymatgen merges such sites into one (and then refuses the total occupancy above 1); the
    fast path leaves them to pymatgen.
    """
    n = len(frac)
    if n < 2:
        return False
    tol = 2 * _SITE_TOLERANCE
    if n <= 96:
        diff = frac[:, None, :] - frac
        diff -= np.rint(diff)
        np.abs(diff, out=diff)
        # the diagonal (each site with itself) gives n
        return int(np.count_nonzero(diff.max(axis=-1) < tol)) > n
    from scipy.spatial import cKDTree

    points = np.where(frac >= 1.0, 0.0, frac)  # x - floor(x) can round to exactly 1.0
    tree = cKDTree(points, boxsize=1.0)
    return bool(tree.query_pairs(tol, p=np.inf))


def parse_cif_p1(text: str) -> Structure | None:
    """Parse a simple P1 CIF (as written by pymatgen's ``CifWriter``) without pymatgen's parser.

    :param text: the CIF text.
    :returns: the structure (lattice in Å, fractional coordinates wrapped into [0, 1]),
        identical to ``Structure.from_str(text, fmt="cif")``; ``None`` when the text is
        outside the simple case (the caller should then use pymatgen, see
        :func:`parse_cif_fast`).
    """
    if not text.isascii():
        return None
    scalars: dict[str, str] = {}
    symops: list[str] | None = None
    atom_headers: list[str] | None = None
    atom_tokens: list[str] = []
    n_blocks = 0

    # Non-blank, non-comment lines, stripped. pymatgen drops '#' comments that follow
    # whitespace anywhere on a line; such lines are left to pymatgen.
    lines = [line for line in map(str.strip, text.splitlines()) if line and line[0] != "#"]
    if "#" in "".join(lines):
        return None
    n_lines = len(lines)
    i = 0
    while i < n_lines:
        line = lines[i]
        i += 1
        first = line[0]
        if first == "_":
            if n_blocks != 1:
                return None
            if "'" in line or '"' in line:
                tag = line.split(None, 1)[0]
                value = _scalar_value(line)
                if value is None:
                    return None
            else:
                parts = line.split()
                if len(parts) != 2:
                    return None
                tag, value = parts
            if tag not in _ALLOWED_SCALARS or tag in scalars:
                return None
            scalars[tag] = value
            continue
        if first == "d" and line.startswith("data_"):
            n_blocks += 1
            if n_blocks > 1 or "powder_pattern" in line:
                return None
            continue
        if line != "loop_" or n_blocks != 1:
            return None
        # A loop: header tags, one per line, then the values up to the next tag or loop.
        h0 = i
        while i < n_lines and lines[i][0] == "_":
            i += 1
        headers = lines[h0:i]
        b0 = i
        while i < n_lines:
            line = lines[i]
            first = line[0]
            if (
                first == "_"
                or first == ";"
                or (first == "l" and line.startswith("loop_"))
                or (first == "d" and line.startswith("data_"))
            ):
                break
            i += 1
        if not headers or i == b0:
            return None
        joined = " ".join(lines[b0:i])
        all_headers = " ".join(headers)
        if len(all_headers.split()) != len(headers):  # a header line with a value on it
            return None
        if headers[0].startswith("_atom_site_"):
            if atom_headers is not None or len(set(headers)) != len(headers):
                return None
            if all_headers.count("_atom_site_") != len(headers) or _ATOM_FORBIDDEN.search(
                all_headers
            ):
                return None
            if "'" in joined or '"' in joined or "(" in joined or ";" in joined:
                return None
            atom_tokens = joined.split()
            normalized = " " + " ".join(atom_tokens)
            if " _" in normalized or " loop_" in normalized or " data_" in normalized:
                return None  # pymatgen would read these tokens as new items
            atom_headers = headers
            if len(atom_tokens) % len(headers):
                return None
        elif any(h in _SYMOP_XYZ_TAGS for h in headers):
            if symops is not None or not all(
                h in _SYMOP_XYZ_TAGS or h in _SYMOP_ID_TAGS for h in headers
            ):
                return None
            xyz_columns = [k for k, h in enumerate(headers) if h in _SYMOP_XYZ_TAGS]
            if len(xyz_columns) != 1:
                return None
            tokens = ["".join(t) for t in _TOKEN.findall(joined)]
            if len(tokens) != len(headers):  # exactly one operation
                return None
            symops = [tokens[xyz_columns[0]]]
        else:
            return None

    if n_blocks != 1 or symops is None or atom_headers is None:
        return None
    if not all(_is_identity(op) for op in symops):
        return None
    if not scalars.keys() >= _CELL_SET or not _ATOM_REQUIRED_SET.issubset(atom_headers):
        return None

    try:
        params = [float(scalars[tag]) for tag in _CELL_TAGS]
    except ValueError:
        return None
    if "(" in "".join(scalars[tag] for tag in _CELL_TAGS) or not all(map(math.isfinite, params)):
        return None

    n_columns = len(atom_headers)
    columns = {h: atom_tokens[k::n_columns] for k, h in enumerate(atom_headers)}
    symbols = columns["_atom_site_type_symbol"]
    labels = columns["_atom_site_label"]
    n_sites = len(symbols)
    if n_sites == 0:
        return None

    infos = {}
    for symbol in set(symbols):
        info = _element_info(symbol)
        if info is None:
            return None
        infos[symbol] = info

    # Without an occupancy column CifParser uses the integer 1, else the float it reads.
    float_amount = "_atom_site_occupancy" in columns
    if float_amount:
        try:
            occupancies = {float(o) for o in set(columns["_atom_site_occupancy"])}
        except ValueError:
            return None
        if occupancies != {1.0}:
            return None

    kx, ky, kz = (atom_headers.index(f"_atom_site_fract_{a}") for a in "xyz")
    tokens = atom_tokens[kx::n_columns] + atom_tokens[ky::n_columns] + atom_tokens[kz::n_columns]
    try:
        frac = _fractional_coordinates(tokens, n_sites)
    except ValueError:
        return None
    if frac is None:
        return None

    if not _thick_enough(*params):
        return None
    lattice = Lattice.from_parameters(*params)
    if not np.isfinite(lattice.matrix).all():
        return None

    # Site order: CifParser sorts by composition (descending element order, stable), then
    # Structure.get_sorted_structure sorts by Site.__lt__ (electronegativity, then symbol).
    if any(infos[s][1] != infos[s][1] for s in infos):  # NaN electronegativity: emulate exactly
        element_rank = {s: r for r, s in enumerate(sorted(infos, key=lambda s: (infos[s][2], s)))}
        order = sorted(range(n_sites), key=lambda k: -element_rank[symbols[k]])
        order = sorted(order, key=lambda k: _SiteOrder(infos[symbols[k]][1], symbols[k]))
    else:
        site_key = {s: (infos[s][1], s) for s in infos}
        order = sorted(range(n_sites), key=lambda k: site_key[symbols[k]])

    species = [_composition(symbols[k], float_amount) for k in order]
    return _make_structure(lattice, species, frac[order], [labels[k] for k in order])


def _make_structure_direct(
    lattice: Lattice, species: list[Composition], frac: np.ndarray, labels: list[str]
) -> Structure:
    """Build the Structure that ``Structure(lattice, species, frac, labels=labels)`` builds.

    Sets the instance attributes directly instead of going through ``PeriodicSite.__init__``
    and ``Site.__setattr__`` (about 5 µs per site); :func:`_direct_build_is_exact` checks once
    that the result is identical to the constructor's for the installed pymatgen.
    """
    new_site = PeriodicSite.__new__
    sites = []
    for comp, row, label in zip(species, frac, labels, strict=True):
        site = new_site(PeriodicSite)
        site.__dict__.update(
            _lattice=lattice,
            _frac_coords=row,
            _species=comp,
            _coords=None,
            properties={},
            _label=label,
        )
        sites.append(site)
    structure = Structure.__new__(Structure)
    structure.__dict__.update(_lattice=lattice, _sites=tuple(sites), _charge=None, _properties={})
    return structure


def _make_structure_init(
    lattice: Lattice, species: list[Composition], frac: np.ndarray, labels: list[str]
) -> Structure:
    return Structure(lattice, species, frac, labels=labels, site_properties={})


@lru_cache(maxsize=1)
def _direct_build_is_exact() -> bool:
    """Whether :func:`_make_structure_direct` gives the constructor's object (same attributes)."""
    try:
        lattice = Lattice.from_parameters(3.0, 4.0, 5.0, 80.0, 95.0, 100.0)
        species = [_composition("O", True), _composition("Fe", True)]
        frac = np.array([[0.0, 0.5, 0.25], [0.75, 0.1, 0.9]])
        labels = ["O1", "Fe2"]
        direct = _make_structure_direct(lattice, species, frac, labels)
        reference = _make_structure_init(lattice, species, frac, labels)
        if vars(direct).keys() != vars(reference).keys():
            return False
        for a, b in zip(direct, reference, strict=True):
            if vars(a).keys() != vars(b).keys() or vars(a)["properties"] != vars(b)["properties"]:
                return False
        return direct.as_dict() == reference.as_dict() and direct == reference
    except Exception:
        return False


def _make_structure(
    lattice: Lattice, species: list[Composition], frac: np.ndarray, labels: list[str]
) -> Structure:
    if _direct_build_is_exact():
        return _make_structure_direct(lattice, species, frac, labels)
    return _make_structure_init(lattice, species, frac, labels)


def parse_cif_pymatgen(text: str) -> Structure:
    """Parse CIF text with pymatgen's ``CifParser`` (first structure, cell as given).

    Equivalent to ``Structure.from_str(text, fmt="cif")`` with pymatgen's warnings silenced.

    :param text: the CIF text.
    :returns: the structure (Å).
    :raises CifParseError: when pymatgen cannot build a structure; the message gives
        pymatgen's reason in short.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            return parser.parse_structures(primitive=False, on_error="warn")[0]
        except Exception as exc:
            reasons = [
                str(w.message).split("\n", 1)[-1].strip()
                for w in caught
                if str(w.message).startswith("No structure parsed")
            ]
            if reasons:
                reason = reasons[0]
                if re.fullmatch(r"'_[^']*'", reason):  # a KeyError: a field is missing
                    reason = f"missing field {reason}"
            elif isinstance(exc, ValueError):
                reason = f"no structure found ({exc})"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            raise CifParseError(_shorten(reason)) from exc


def parse_cif_fast(text: str) -> Structure:
    """Parse CIF text: the fast path for simple P1 CIFs, pymatgen's ``CifParser`` otherwise.

    :param text: the CIF text (first data block is used when there are several).
    :returns: the same structure as ``Structure.from_str(text, fmt="cif")`` (Å).
    :raises CifParseError: when no structure can be built.
    """
    structure = parse_cif_p1(text)
    if structure is None:
        structure = parse_cif_pymatgen(text)
    return structure


_BLOCK_START = re.compile(r"^\s*data_", flags=re.MULTILINE)


def split_cif_blocks(text: str) -> list[str]:
    """Split a CIF text into its data blocks (as pymatgen's ``CifFile`` does).

    :param text: CIF text with one or more ``data_`` blocks.
    :returns: one CIF text per data block, in file order (empty when there is none).
    """
    starts = [m.start() for m in _BLOCK_START.finditer(text)]
    return [text[s:e] for s, e in zip(starts, [*starts[1:], len(text)], strict=False)]


def _shorten(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."
