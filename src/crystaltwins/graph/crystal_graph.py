"""Crystal graphs: atoms as nodes, each atom's nearest neighbours (periodic images included) as edges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure
from pymatgen.core.periodic_table import DummySpecies

from crystaltwins.graph.geometry import check_min_distance, check_search_bounds
from crystaltwins.graph.neighbors import NeighborList, find_neighbors
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.records import CrystalInputError


@dataclass
class CrystalGraph:
    """The graph of one crystal, with what exact augmentation needs.

    :param id: the crystal's id.
    :param atomic_numbers: ``(n_atoms,)`` element numbers Z.
    :param positions: ``(n_atoms, 3)`` Cartesian coordinates in Å.
    :param lattice: ``(3, 3)`` lattice vectors (rows) in Å.
    :param edges: the graph's edges: per atom its nearest neighbours, nearest first.
    :param candidates: further edges that may enter the nearest set when atoms move by up to
        ``settings.perturbation_margin``.
    :param labels: numeric labels by name.
    """

    id: str
    atomic_numbers: np.ndarray
    positions: np.ndarray
    lattice: np.ndarray
    edges: NeighborList
    candidates: NeighborList
    labels: dict[str, float] = field(default_factory=dict)

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def edge_table(self) -> list[tuple[int, int, float, int, int, int]]:
        """One row per edge: (atom, neighbour, distance in Å, image a, image b, image c)."""
        e = self.edges
        return [
            (int(i), int(j), float(d), int(n[0]), int(n[1]), int(n[2]))
            for i, j, d, n in zip(e.src, e.dst, e.distance, e.image, strict=True)
        ]


def element_numbers(structure: Structure, where: str) -> np.ndarray:
    """``(n_atoms,)`` atomic numbers Z of an ordered structure.

    :raises CrystalInputError: for a symbol that is no element (pymatgen reads ``Xx`` in a CIF
        or POSCAR as a dummy species whose ``Z`` is meaningless), naming the symbol and site.
    """
    numbers = np.empty(len(structure), dtype=np.int64)
    for index, site in enumerate(structure):
        specie = site.specie
        z = getattr(specie, "Z", None)
        if isinstance(specie, DummySpecies) or not isinstance(z, int) or not 1 <= z <= 118:
            symbol = getattr(specie, "symbol", str(specie))
            raise CrystalInputError(
                where, f"unknown element symbol {symbol!r} (site {index}): not a chemical element"
            )
        numbers[index] = z
    return numbers


def build_crystal_graph(
    structure: Structure,
    settings: GraphSettings | None = None,
    *,
    id: str = "",
    labels: dict[str, float] | None = None,
    supports_element: Callable[[int], bool] | None = None,
    source: str = "",
) -> CrystalGraph:
    """Build the crystal graph of ``structure``.

    :param structure: an ordered periodic structure.
    :param settings: radius, neighbour count and candidate margin; the CT defaults when ``None``.
    :param supports_element: returns whether an element number has features (the featurizer's
        ``supports``); elements failing it are reported.
    :param source: where the structure came from, for error messages.
    :raises CrystalInputError: disordered structure, unknown element symbol, element without
        features, a cell too thin or too small for a bounded neighbour search, atoms closer than
        :data:`~crystaltwins.graph.geometry.MIN_INTERATOMIC_DISTANCE`, or no neighbour within
        the cutoff (see :mod:`crystaltwins.graph.geometry`).
    """
    settings = settings or GraphSettings()
    where = source or id or "structure"
    if not structure.is_ordered:
        raise CrystalInputError(
            where, "partial occupancies: disordered structures are not supported"
        )
    if len(structure) == 0:
        raise CrystalInputError(where, "the structure has no atoms")
    atomic_numbers = element_numbers(structure, where)
    if supports_element is not None:
        missing = sorted({int(z) for z in atomic_numbers if not supports_element(int(z))})
        if missing:
            from pymatgen.core.periodic_table import Element

            names = ", ".join(f"{Element.from_Z(z).symbol} (Z={z})" for z in missing)
            raise CrystalInputError(where, f"no element features for {names}")
    positions = np.ascontiguousarray(structure.cart_coords, dtype=np.float64)
    lattice = np.ascontiguousarray(structure.lattice.matrix, dtype=np.float64)
    # Bounded work and images that fit IMAGE_DTYPE, decided before the search.
    search_radius = settings.radius + 2.0 * settings.perturbation_margin
    check_search_bounds(lattice, structure.frac_coords, search_radius, where)
    try:
        edges, candidates = find_neighbors(
            positions,
            lattice,
            radius=settings.radius,
            max_neighbors=settings.max_neighbors,
            margin=settings.perturbation_margin,
        )
    except ValueError as error:
        raise CrystalInputError(where, str(error)) from None
    if len(edges) == 0:
        raise CrystalInputError(where, f"no atom has a neighbour within {settings.radius} Å")
    check_min_distance(edges.src, edges.dst, edges.distance, atomic_numbers, where)
    return CrystalGraph(
        id=id,
        atomic_numbers=atomic_numbers.astype(np.uint8),
        positions=positions,
        lattice=lattice,
        edges=edges,
        candidates=candidates,
        labels=dict(labels or {}),
    )
