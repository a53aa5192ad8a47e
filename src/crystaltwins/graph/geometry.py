"""Geometry limits: crystals whose neighbour search would explode, or whose graph would be wrong.

:func:`check_search_bounds` runs *before* the neighbour search, in time and memory linear in the
number of atoms; it rejects a crystal when

* its periodic images would not fit :data:`IMAGE_DTYPE` (the type graph caches store them in), or
* the search would visit more than :data:`MAX_SEARCH_POINTS` atom images, or find more than
  :data:`MAX_SEARCH_PAIRS` pairs (e.g. one atom in a 0.05 Å cubic cell: 34 million images,
  18 million pairs; 20 s and 5 GB before this check), or
* its atoms are spread so far that the search's grid would exceed :data:`MAX_SEARCH_CELLS`
  cubes (two atoms in a 10,000 Å cell: 53 GB asked for before this check).

:func:`check_min_distance` runs on the search's result (bounded by the above) and rejects atoms
closer than :data:`MIN_INTERATOMIC_DISTANCE` (an atom and a periodic image of itself included).

Lengths in Å.
"""

from __future__ import annotations

import math

import numpy as np

from crystaltwins.io.records import CrystalInputError

#: Integer type of periodic image vectors (:attr:`NeighborList.image`, the caches'
#: ``edge_image`` / ``cand_image``). :func:`check_search_bounds` guarantees every image of an
#: accepted crystal fits (see :func:`image_bounds`).
IMAGE_DTYPE = np.int16
#: Atoms closer than this (Å) are rejected. The H-H bond of H2 (0.74 Å) is about the shortest
#: in nature; the shortest distance in the shared datasets is 0.634 Å (perovskite_synth id 4239;
#: mp36k 0.746, hoip 0.751, qmof 0.753 Å; ``benchmarks/geometry_survey.py``). 0.5 Å stays below
#: every real structure and far above the duplicates it is meant to catch (an atom listed twice,
#: 1e-6 Å apart; a cell smaller than its atoms).
MIN_INTERATOMIC_DISTANCE = 0.5
#: Most atom images one neighbour search may visit: ``n_atoms * prod(2 * ceil(R / h_i) + 1)``
#: (``h_i``: the cell's perpendicular heights, ``R``: search radius). Real crystals of the shared
#: datasets need at most 18,954 (mp36k, radius 8 Å + margin); 3 million is about 0.3 GB in
#: pymatgen's kernel. The thinnest real cell height seen is 1.317 Å (mp-756436).
MAX_SEARCH_POINTS = 3_000_000
#: Most neighbour pairs one search may find, estimated before it as
#: ``n_atoms**2 * (4/3 pi R**3) / volume``. Real crystals need at most 97,899 (a qmof MOF).
MAX_SEARCH_PAIRS = 3_000_000
#: Most cubes of side ``R`` in the grid pymatgen's kernel lays over the atoms' bounding box
#: (grown by ``R`` on each side); its memory grows with them, whatever the number of atoms:
#: 5e7 cubes (two atoms in a 3,000 Å cell) took 1.8 GB. 1e7 is a cubic cell of ~1,700 Å edge;
#: a 120 Å cell (larger than any MOF of the shared datasets) needs about 5,000.
MAX_SEARCH_CELLS = 10_000_000


def cell_heights(lattice: np.ndarray) -> np.ndarray:
    """``(3,)`` perpendicular heights of the cell in Å: ``h_i = V / |a_j x a_k|``, the spacing of
    the lattice planes spanned by the two other vectors. ``lattice``: ``(3, 3)`` rows in Å."""
    lattice = np.asarray(lattice, dtype=np.float64)
    volume = abs(float(np.linalg.det(lattice)))
    areas = np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(areas > 0, volume / areas, 0.0)


def image_bounds(lattice: np.ndarray, frac_coords: np.ndarray, radius: float) -> np.ndarray:
    """``(3,)`` bound on ``|n_i|`` for every periodic image ``n`` within ``radius`` Å.

    Proof: a neighbour ``j`` of atom ``i`` at image ``n`` is at ``d = (f_j + n - f_i) L``
    (``f``: fractional coordinates) with ``|d| <= radius``. The component of ``d`` along the unit
    normal of the lattice planes ``i`` is ``(f_j + n - f_i)_i * h_i``, so
    ``|n_i| <= radius / h_i + |f_j,i - f_i,i| <= radius / h_i + spread_i``, where ``spread_i`` is
    the range of the atoms' fractional coordinates along ``i`` (below 1 for atoms inside the
    cell, giving ``|n_i| <= ceil(radius / h_i)``). ``n_i`` being an integer, the bound is the
    floor of that.
    """
    heights = cell_heights(lattice)
    frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    spread = frac.max(axis=0) - frac.min(axis=0) if len(frac) else np.zeros(3)
    with np.errstate(divide="ignore"):
        return np.floor(radius / heights + spread)


def check_search_bounds(
    lattice: np.ndarray, frac_coords: np.ndarray, radius: float, where: str
) -> None:
    """Reject a crystal whose neighbour search within ``radius`` Å would not be bounded.

    :param lattice: ``(3, 3)`` lattice vectors (rows) in Å.
    :param frac_coords: ``(n_atoms, 3)`` fractional coordinates.
    :param radius: the search radius in Å (cutoff plus candidate margin).
    :param where: the crystal's source, for the message.
    :raises CrystalInputError: the cell is so thin (or atoms so far outside it) that image vectors
        overflow :data:`IMAGE_DTYPE`, or the search exceeds :data:`MAX_SEARCH_POINTS` /
        :data:`MAX_SEARCH_PAIRS`; the message gives the heights and the estimate.
    """
    lattice = np.asarray(lattice, dtype=np.float64)
    n_atoms = int(np.asarray(frac_coords).reshape(-1, 3).shape[0])
    heights = cell_heights(lattice)
    volume = abs(float(np.linalg.det(lattice)))
    shown = ", ".join(f"{h:.3g}" for h in heights)
    if not (np.isfinite(heights).all() and (heights > 0).all() and volume > 0):
        raise CrystalInputError(where, f"degenerate cell (heights {shown} Å)")
    if not np.isfinite(frac_coords).all():
        raise CrystalInputError(where, "non-finite atomic coordinates")
    bounds = image_bounds(lattice, frac_coords, radius)
    limit = np.iinfo(IMAGE_DTYPE).max
    if (bounds > limit).any():
        axis = "abc"[int(np.argmax(bounds))]
        raise CrystalInputError(
            where,
            f"periodic images up to {bounds.max():.3g} cells away along {axis} (cell heights "
            f"{shown} Å, radius {radius:g} Å): more than {limit}; the cell is too thin or the "
            "atoms lie far outside it",
        )
    frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    if len(frac):
        cart = frac @ lattice
        extent = cart.max(axis=0) - cart.min(axis=0) + 2 * radius
        cubes = math.prod(math.ceil(float(e) / radius) for e in extent)
        if cubes > MAX_SEARCH_CELLS:
            raise CrystalInputError(
                where,
                f"cell too large for a neighbour search within {radius:g} Å (heights {shown} Å, "
                f"atoms spread over {' x '.join(f'{e:.3g}' for e in extent)} Å): about "
                f"{cubes:.3g} search cubes, limit {MAX_SEARCH_CELLS:.0e}",
            )
    images = math.prod(2 * math.ceil(radius / h) + 1 for h in heights)
    points = n_atoms * images
    pairs = n_atoms * n_atoms * (4.0 / 3.0 * math.pi * radius**3) / volume
    if points > MAX_SEARCH_POINTS or pairs > MAX_SEARCH_PAIRS:
        raise CrystalInputError(
            where,
            f"cell too small or too thin for a neighbour search within {radius:g} Å (heights "
            f"{shown} Å, {n_atoms} atom{'s' if n_atoms != 1 else ''} in {volume:.3g} Å^3): about {points:.3g} atom images "
            f"and {pairs:.3g} pairs to search, limits {MAX_SEARCH_POINTS:.0e} and "
            f"{MAX_SEARCH_PAIRS:.0e}",
        )


def check_min_distance(
    src: np.ndarray, dst: np.ndarray, distance: np.ndarray, numbers: np.ndarray, where: str
) -> None:
    """Reject atoms closer than :data:`MIN_INTERATOMIC_DISTANCE`.

    :param src: ``(E,)`` centre atoms of the nearest-neighbour edges (each atom's nearest
        neighbour within the cutoff must be among them).
    :param dst: ``(E,)`` neighbour atoms.
    :param distance: ``(E,)`` edge lengths in Å.
    :param numbers: ``(n_atoms,)`` atomic numbers, for the message.
    :raises CrystalInputError: naming the two atoms and their distance.
    """
    if len(distance) == 0:
        return
    k = int(np.argmin(distance))
    if distance[k] < MIN_INTERATOMIC_DISTANCE:
        from pymatgen.core.periodic_table import Element

        i, j = int(src[k]), int(dst[k])
        symbols = {a: Element.from_Z(int(numbers[a])).symbol for a in (i, j)}
        which = f"atom {i} ({symbols[i]}) and " + (
            "a periodic image of itself" if i == j else f"atom {j} ({symbols[j]})"
        )
        raise CrystalInputError(
            where,
            f"{which} are {distance[k]:.3g} Å apart, closer than {MIN_INTERATOMIC_DISTANCE} Å "
            "(duplicate atoms, or a cell too small for its atoms)",
        )
