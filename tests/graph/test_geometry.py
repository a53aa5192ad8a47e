"""Geometry limits and unknown elements: rejected with a clear reason, in bounded time, on every
input path (CIF, POSCAR, ASE); image vectors stored in a type that cannot overflow."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from pymatgen.core import Lattice, Structure

from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.graph import geometry
from crystaltwins.graph.crystal_graph import build_crystal_graph
from crystaltwins.graph.neighbors import find_neighbors
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.readers import iter_entries, parse_entry, records_from_structures
from crystaltwins.io.records import CrystalInputError


def one_atom(lattice: Lattice) -> Structure:
    return Structure(lattice, ["Na"], [[0, 0, 0]])


@pytest.mark.parametrize("edge", [0.05, 0.0101])
def test_tiny_cell_is_rejected_before_the_search(edge: float) -> None:
    start = time.perf_counter()
    with pytest.raises(CrystalInputError, match="too small or too thin") as info:
        build_crystal_graph(one_atom(Lattice.cubic(edge)), source="tiny")
    assert time.perf_counter() - start < 1.0
    assert f"heights {edge:.3g}" in info.value.reason


@pytest.mark.parametrize("edge", [3000.0, 1e4])
def test_huge_cell_is_rejected_before_the_search(edge: float) -> None:
    """Two atoms at opposite corners of a huge cell: pymatgen's grid over them took 1.8 GB
    (3,000 Å) or asked for 53 GB (10,000 Å); rejected at once instead."""
    structure = Structure(Lattice.cubic(edge), ["Na", "Cl"], [[0, 0, 0], [0.9, 0.9, 0.9]])
    start = time.perf_counter()
    with pytest.raises(CrystalInputError, match="cell too large.*search cubes"):
        build_crystal_graph(structure, source="huge")
    assert time.perf_counter() - start < 1.0


def test_a_large_real_sized_cell_is_accepted() -> None:
    """A 120 Å cell with atoms spread through it (a large MOF's size) is searched as before."""
    d = 2.8 / 120.0
    coords = [[0.1, 0.1, 0.1], [0.1 + d, 0.1, 0.1], [0.9, 0.9, 0.9], [0.9 - d, 0.9, 0.9]]
    structure = Structure(Lattice.cubic(120.0), ["Na", "Cl", "Na", "Cl"], coords)
    graph = build_crystal_graph(structure, source="large")
    assert len(graph.atomic_numbers) == 4


def test_close_atoms_are_rejected() -> None:
    structure = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [1e-6, 0, 0]])
    with pytest.raises(CrystalInputError, match=r"atom 0 \(Na\) and atom 1 \(Cl\) are 4e-06 Å"):
        build_crystal_graph(structure)


def test_thin_cell_is_rejected_not_wrapped() -> None:
    """4 x 4 x 0.001 Å: images up to 8100 along c wrapped in int8 (157 duplicated image
    vectors in the cache); now the atom is 0.001 Å from its own image and rejected."""
    with pytest.raises(CrystalInputError, match="a periodic image of itself are 0.001 Å apart"):
        build_crystal_graph(one_atom(Lattice.orthorhombic(4, 4, 0.001)))


def test_images_fit_their_type_for_an_accepted_thin_direction() -> None:
    """A legal long-range image (|n_c| = 8 for a 1.1 Å height) is stored exactly, and every
    image bound of an accepted crystal fits IMAGE_DTYPE."""
    structure = Structure(Lattice.orthorhombic(5, 5, 1.1), ["H"], [[0, 0, 0]])
    graph = build_crystal_graph(structure, GraphSettings(max_neighbors=30))
    assert graph.edges.image.dtype == geometry.IMAGE_DTYPE
    assert np.abs(graph.edges.image[:, 2]).max() >= 4
    # Distances recomputed from the stored images match: no wrap-around.
    vectors = graph.positions[graph.edges.dst] + graph.edges.image @ graph.lattice
    assert np.allclose(
        np.linalg.norm(vectors - graph.positions[graph.edges.src], axis=1), graph.edges.distance
    )
    edges, _ = find_neighbors(graph.positions, graph.lattice)
    assert edges.image.dtype == geometry.IMAGE_DTYPE


def test_image_bound_holds() -> None:
    rng = np.random.default_rng(0)
    lattice = Lattice.from_parameters(3.0, 4.0, 2.5, 70, 100, 110)
    frac = rng.uniform(-1.5, 2.5, size=(6, 3))
    structure = Structure(lattice, ["C"] * 6, frac)
    edges, candidates = find_neighbors(structure.cart_coords, lattice.matrix, margin=0.05)
    bound = geometry.image_bounds(lattice.matrix, frac, 8.1)
    images = np.abs(np.concatenate([edges.image, candidates.image]))
    assert (images.max(axis=0) <= bound).all()


def test_atoms_far_outside_the_cell_are_rejected() -> None:
    structure = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [40000.5, 0.5, 0.5]])
    with pytest.raises(CrystalInputError, match="cells away along a"):
        build_crystal_graph(structure)


CIF_XX = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Xx Xx1 0 0 0 1
Na Na1 0.5 0.5 0.5 1
"""

POSCAR_XX = "x\n1.0\n4 0 0\n0 4 0\n0 0 4\nXx Na\n1 1\ndirect\n0 0 0\n0.5 0.5 0.5\n"


@pytest.mark.parametrize("name,text", [("x.cif", CIF_XX), ("POSCAR", POSCAR_XX)])
def test_unknown_element_symbol_is_named(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    (entry,) = iter_entries(path)
    record = parse_entry(entry)
    with pytest.raises(CrystalInputError, match=r"unknown element symbol 'Xx' \(site 0\)"):
        build_crystal_graph(record.structure, source=record.source)


def test_ase_dummy_atom_is_named() -> None:
    atoms = Atoms("XNa", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[4, 4, 4], pbc=True)
    (record,) = records_from_structures([atoms])
    with pytest.raises(CrystalInputError, match="unknown element symbol"):
        build_crystal_graph(record.structure)


def test_ase_tiny_cell_is_rejected() -> None:
    atoms = Atoms("Na", positions=[[0, 0, 0]], cell=[0.05, 0.05, 0.05], pbc=True)
    (record,) = records_from_structures([atoms])
    with pytest.raises(CrystalInputError, match="too small or too thin"):
        build_crystal_graph(record.structure)


def test_cache_skips_bad_geometry_and_keeps_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "poscars"
    folder.mkdir()
    good = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    good.to(filename=str(folder / "good.vasp"), fmt="poscar")
    one_atom(Lattice.cubic(0.05)).to(filename=str(folder / "tiny.vasp"), fmt="poscar")
    (folder / "xx.vasp").write_text(POSCAR_XX)
    summary = build_graph_cache(folder, tmp_path / "cache", progress=False)
    assert summary.crystals == 1
    reasons = {bad.id: bad.reason for bad in summary.skipped}
    assert set(reasons) == {"tiny", "xx"}
    assert "too small or too thin" in reasons["tiny"]
    assert "'Xx'" in reasons["xx"]
    cache = GraphCache(tmp_path / "cache")
    assert cache.array("edge_image").dtype == geometry.IMAGE_DTYPE
    assert cache.array("cand_image").dtype == geometry.IMAGE_DTYPE
