"""The fast P1 CIF parser gives exactly pymatgen's structure, and declines what it does not handle."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from crystaltwins.io.cif import (
    CifParseError,
    parse_cif_fast,
    parse_cif_p1,
    parse_cif_pymatgen,
    split_cif_blocks,
)
from tests.helpers import read_cifs


def pymatgen_parse(text: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")


def assert_same(fast: Structure, ref: Structure) -> None:
    """Same species order, lattice matrix and fractional coordinates (1e-10), same labels."""
    assert [site.species_string for site in fast] == [site.species_string for site in ref]
    np.testing.assert_allclose(fast.lattice.matrix, ref.lattice.matrix, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fast.frac_coords, ref.frac_coords, rtol=0, atol=1e-10)
    assert fast.labels == ref.labels
    assert fast.as_dict() == ref.as_dict()  # also site properties, charge, occupancies


@pytest.fixture(scope="module")
def perovskite_cif(data_dir: Path) -> str:
    return read_cifs(data_dir / "perovskites.csv.gz", 1)[0][1]


# ---- real data: the fast path is taken and equals pymatgen --------------------------------


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("perovskites.csv.gz", 400),
        ("mp36k.csv.gz", 400),
        ("hoip.csv.gz", 120),
        ("qmof.csv.gz", 80),
        ("mp_elasticity.csv.gz", 50),
        ("perovskite_synth.csv.gz", 50),
    ],
)
def test_fast_parser_equals_pymatgen_on_real_crystals(
    data_dir: Path, name: str, count: int
) -> None:
    """1,000 crystals from perovskites, mp36k, hoip and qmof (and 100 from the other two sets)."""
    rows = read_cifs(data_dir / name, count)
    assert len(rows) == count
    for crystal_id, text in rows:
        fast = parse_cif_p1(text)
        assert fast is not None, f"{name} {crystal_id}: fast path declined a CifWriter P1 CIF"
        assert_same(fast, pymatgen_parse(text))
        assert isinstance(fast, Structure)


def test_fast_parser_on_hmof_cifs(data_dir: Path) -> None:
    """hMOF CIFs (another writer, coordinates outside [0, 1), no occupancy column)."""
    files = sorted((data_dir / "samples" / "hmof_cif").glob("*.cif"))[:40]
    assert files
    for path in files:
        text = path.read_text()
        fast = parse_cif_p1(text)
        assert fast is not None, path
        assert_same(fast, pymatgen_parse(text))
        assert fast.frac_coords.min() >= 0 and fast.frac_coords.max() <= 1


def test_cod_cifs_fall_back_to_pymatgen(data_dir: Path) -> None:
    """Symmetrised COD CIFs (CGCNN sample) are outside the simple case: pymatgen parses them."""
    for path in sorted((data_dir / "samples" / "cgcnn_regression").glob("*.cif")):
        text = path.read_text()
        assert parse_cif_p1(text) is None
        assert_same(parse_cif_fast(text), pymatgen_parse(text))


def test_fast_structure_behaves_like_a_normal_structure(perovskite_cif: str) -> None:
    structure = parse_cif_fast(perovskite_cif)
    copy = structure.copy()
    copy.perturb(0.01)
    assert not np.allclose(copy.cart_coords, structure.cart_coords)
    assert structure.get_all_neighbors(3.0)
    assert Structure.from_dict(structure.as_dict()) == structure


# ---- details of pymatgen's parse that the fast path reproduces ------------------------------


def _cif(atoms: list[tuple[str, str, float, float, float]], occupancy: bool = True) -> str:
    head = """# generated using pymatgen
data_test
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   4.10000000
_cell_length_b   5.20000000
_cell_length_c   6.30000000
_cell_angle_alpha   80.00000000
_cell_angle_beta   95.00000000
_cell_angle_gamma   100.00000000
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
"""
    if occupancy:
        head += " _atom_site_occupancy\n"
    rows = [
        f"  {el}  {label}  1  {x!r}  {y!r}  {z!r}" + ("  1" if occupancy else "")
        for el, label, x, y, z in atoms
    ]
    return head + "\n".join(rows) + "\n"


@pytest.mark.parametrize("copies", [1, 6, 30])  # 4, 24 and 120 sites: all code paths
def test_snaps_thirds_wraps_and_orders_like_pymatgen(copies: int) -> None:
    atoms = []
    for k in range(copies):
        shift = k / (copies + 1)
        atoms += [
            ("O", f"O{4 * k}", 0.33334, 0.6666, -0.0 + shift),
            ("Na", f"Na{4 * k + 1}", 1.25, -0.25, 0.5 + shift),
            ("O", f"O{4 * k + 2}", 0.333, 0.66666, -1e-18 + shift),
            ("Cl", f"Cl{4 * k + 3}", 0.1, 0.2, 0.3 + shift),
        ]
    text = _cif(atoms)
    fast = parse_cif_p1(text)
    assert fast is not None
    assert_same(fast, pymatgen_parse(text))
    species = [str(s) for s in fast.species]
    assert species == ["Na"] * copies + ["Cl"] * copies + ["O"] * (2 * copies)
    o0 = fast.labels.index("O0")
    assert fast.frac_coords[o0][0] == 1 / 3 and fast.frac_coords[o0][1] == 2 / 3  # snapped
    o2 = fast.labels.index("O2")
    assert fast.frac_coords[o2][0] == 0.333  # outside the snapping window
    np.testing.assert_allclose(fast.frac_coords[0], [0.25, 0.75, 0.5])  # wrapped


@pytest.mark.filterwarnings("ignore:No Pauling electronegativity")
def test_elements_without_electronegativity_are_ordered_like_pymatgen() -> None:
    """He, Ar, Og... have NaN electronegativity: pymatgen's sort order is then input-dependent."""
    rng = random.Random(7)
    elements = ["He", "Ar", "Ne", "Na", "Cl", "O", "Kr", "Xe", "Fe", "Og", "H", "C"]
    for _ in range(40):
        n = rng.randint(2, 10)
        structure = Structure(
            Lattice.from_parameters(5 + rng.random(), 6, 7, 80, 95, 100),
            [rng.choice(elements) for _ in range(n)],
            [[rng.random() for _ in range(3)] for _ in range(n)],
        )
        text = str(CifWriter(structure))
        fast = parse_cif_p1(text)
        assert fast is not None
        assert_same(fast, pymatgen_parse(text))


def test_no_occupancy_column_gives_pymatgen_species() -> None:
    """CifParser puts the integer 1 on sites without an occupancy column, 1.0 otherwise."""
    atoms = [("Fe", "Fe1", 0.0, 0.0, 0.0), ("O", "O1", 0.5, 0.5, 0.5)]
    for occupancy in (True, False, True):
        text = _cif(atoms, occupancy=occupancy)
        fast = parse_cif_p1(text)
        assert fast is not None
        ref = pymatgen_parse(text)
        assert_same(fast, ref)
        amounts = [type(amount) for site in fast for amount in site.species.values()]
        assert amounts == [type(amount) for site in ref for amount in site.species.values()]
        assert amounts == [float if occupancy else int] * 2


# ---- outside the simple case: declined, and parse_cif_fast gives pymatgen's answer ----------


def _variants(text: str) -> dict[str, str]:
    rh_row = "  Rh  Rh0  1  0.00000000  0.00000000  0.00000000  1"
    assert rh_row in text
    return {
        "symmetry operation": text.replace(
            "  1  'x, y, z'", "  1  'x, y, z'\n  2  '-x, -y, -z'"
        ).replace(rh_row, "  Rh  Rh0  1  0.10000000  0.20000000  0.30000000  1"),
        "partial occupancy": text.replace(rh_row, rh_row[:-1] + "0.5"),
        "oxidation state": text.replace(rh_row, rh_row.replace("  Rh  Rh0", "  Rh3+  Rh0"))
        + "loop_\n _atom_type_symbol\n _atom_type_oxidation_number\n  Rh3+  3\n",
        "uncertainty": text.replace("_cell_length_a   3.95453111", "_cell_length_a   3.9545(2)"),
        "two data blocks": text + "\n" + text.replace("data_TeRhN3", "data_second"),
        "unknown tag": text.replace(
            "_cell_volume", "_space_group_magn.name_BNS  'P 1'\n_cell_volume"
        ),
        "comment after a value": text.replace(
            "_cell_length_b   3.95453111", "_cell_length_b   3.95453111  # b"
        ),
        "missing type symbol": text.replace(" _atom_site_type_symbol\n", "")
        .replace("  Rh  Rh0", "  Rh0")
        .replace("  Te  Te1", "  Te1")
        .replace("  N  N", "  N"),
        "text field": text.replace(
            "_cell_volume", "_publ_section_title\n;\nA title\n;\n_cell_volume"
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "symmetry operation",
        "partial occupancy",
        "oxidation state",
        "uncertainty",
        "two data blocks",
        "unknown tag",
        "comment after a value",
        "missing type symbol",
        "text field",
    ],
)
def test_unusual_cifs_fall_back_to_pymatgen(perovskite_cif: str, case: str) -> None:
    text = _variants(perovskite_cif)[case]
    assert parse_cif_p1(text) is None
    ref = pymatgen_parse(text)
    assert_same(parse_cif_fast(text), ref)


def test_overlapping_sites_in_large_cells(data_dir: Path) -> None:
    files = sorted((data_dir / "samples" / "hmof_cif").glob("*.cif"))
    large = [p for p in files if p.read_text().count("\n") > 150][:3]
    assert large
    for path in large:
        text = path.read_text()
        lines = text.splitlines()
        first_atom = next(
            k for k, line in enumerate(lines) if line.startswith(("Zn1", "Cu1", "C1"))
        )
        label, symbol, x, y, z = lines[first_atom].split()
        lines.append(f"{label}b\t{symbol}\t{float(x) + 1.00001:.6f}\t{y}\t{z}")  # periodic image
        overlapping = "\n".join(lines) + "\n"
        assert len(pymatgen_parse(text)) > 96
        assert parse_cif_p1(overlapping) is None
        with pytest.raises(CifParseError, match="Occupancy"):
            parse_cif_fast(overlapping)


def test_overlapping_sites_are_left_to_pymatgen_which_refuses_them(perovskite_cif: str) -> None:
    text = perovskite_cif.replace(
        "  N  N3  1  0.50000000  0.50000000  0.00000000",
        "  N  N3  1  0.50000000  0.00000000  0.50000000",
    )
    assert parse_cif_p1(text) is None
    with pytest.raises(CifParseError, match="Occupancy"):
        parse_cif_fast(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("this is not a CIF", "no structure"),
        ("", "no structure"),
        ("data_x\n_cell_length_a 3\n", "missing field '_atom_site"),
    ],
)
def test_unparsable_text_raises_cif_parse_error(text: str, reason: str) -> None:
    with pytest.raises(CifParseError, match=reason):
        parse_cif_fast(text)
    with pytest.raises(CifParseError):
        parse_cif_pymatgen(text)


def test_split_cif_blocks(perovskite_cif: str) -> None:
    second = perovskite_cif.replace("data_TeRhN3", "data_second")
    blocks = split_cif_blocks(perovskite_cif + second)
    assert len(blocks) == 2
    assert blocks[0].lstrip().startswith("data_TeRhN3")
    assert blocks[1].lstrip().startswith("data_second")
    assert split_cif_blocks("no block") == []
