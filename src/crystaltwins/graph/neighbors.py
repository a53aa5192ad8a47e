"""Nearest-neighbour search with periodic images, exactly as CGCNN / Crystal Twins select edges.

The reference code (CGCNN ``data.py``, used by Crystal Twins) does, per crystal::

    all_nbrs = crystal.get_all_neighbors(radius, include_index=True)
    all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]

and keeps the first ``max_num_nbr`` of each atom. ``get_all_neighbors`` lists, per centre, the
pairs in the order of pymatgen's compiled kernel
(:func:`pymatgen.optimization.neighbors.find_points_in_spheres`, called with ``r = radius``), and
Python's ``sorted`` is stable. We call the same kernel with the same arguments on plain arrays
(no ``PeriodicNeighbor`` objects) and sort stably by its float64 distances, so the selected edges,
their order, images and distances are bit for bit the reference's, ties at the
``max_neighbors``-th place included.

**Tie rule.** Equal float64 distances keep the kernel's order. That order follows its internal
cell list (cubes of edge ``radius``), which depends on ``radius`` and on every atom's position:
it cannot be reproduced without running the kernel at ``radius``, so candidate edges for
perturbation come from a second, wider call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

from crystaltwins.graph.geometry import IMAGE_DTYPE
from crystaltwins.graph.settings import DEFAULT_MAX_NEIGHBORS, DEFAULT_RADIUS

#: pymatgen's ``numerical_tol``: pairs closer than this (Å) are an atom and itself, and the kernel
#: keeps pairs with ``d² < r² + SELF_TOLERANCE`` (Å²).
SELF_TOLERANCE = 1e-8
#: Extra width (Å) of the candidate shell, so that rounding never drops a needed candidate.
_BOUND_SLACK = 2e-6

_PBC = np.ones(3, dtype=np.int64)


@dataclass
class NeighborList:
    """Directed edges of one crystal, grouped by centre atom, nearest first in each centre.

    :param src: ``(E,)`` int32 centre atom index *i*.
    :param dst: ``(E,)`` int32 neighbour atom index *j*.
    :param image: ``(E, 3)`` int16 periodic image *n* of the neighbour: its position is
        ``positions[j] + n @ lattice``.
    :param distance: ``(E,)`` float64 distances in Å.
    """

    src: np.ndarray
    dst: np.ndarray
    image: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def take(self, mask_or_index: np.ndarray) -> NeighborList:
        return NeighborList(
            self.src[mask_or_index],
            self.dst[mask_or_index],
            self.image[mask_or_index],
            self.distance[mask_or_index],
        )


def edge_distances(
    positions: np.ndarray,
    lattice: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    image: np.ndarray,
) -> np.ndarray:
    """Distances |r_j + n·L − r_i| in Å of edges ``(i, j, n)``; ``positions`` ``(n_atoms, 3)`` Å."""
    vectors = positions[dst] + image.astype(np.float64) @ lattice - positions[src]
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))


def within_cutoff(distance: np.ndarray, radius: float) -> np.ndarray:
    """The kernel's cutoff test, ``d² < r² + SELF_TOLERANCE`` (a hair beyond ``radius``)."""
    return distance * distance < radius * radius + SELF_TOLERANCE


def order_edges(src: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """The permutation that sorts edges by centre, then by distance; stable, so equal distances
    keep their given order (as the reference's ``sorted``)."""
    return np.lexsort((distance, src))


def rank_within_centre(src_sorted: np.ndarray, num_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """For edges sorted by centre: each edge's rank within its centre, and each centre's start."""
    counts = np.bincount(src_sorted, minlength=num_atoms)
    starts = np.zeros(num_atoms + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    rank = np.arange(src_sorted.shape[0], dtype=np.int64) - starts[src_sorted]
    return rank, starts


def select_nearest(
    edges: NeighborList, num_atoms: int, radius: float, max_neighbors: int
) -> np.ndarray:
    """Boolean mask of the ``max_neighbors`` nearest edges within ``radius`` of every centre.

    ``edges`` must already be ordered by :func:`order_edges`.
    """
    rank, _ = rank_within_centre(edges.src, num_atoms)
    # Edges within the radius come first in each centre's group, so rank among them = rank.
    return (rank < max_neighbors) & within_cutoff(edges.distance, radius)


def _self_pairs(
    centre: np.ndarray, neighbor: np.ndarray, distance: np.ndarray, num_atoms: int
) -> np.ndarray:
    """Mask of the pairs closer than ``SELF_TOLERANCE``: each atom and itself.

    :raises ValueError: two different atoms closer than ``SELF_TOLERANCE``.
    """
    close = distance <= SELF_TOLERANCE
    # The kernel lists every atom with itself (image 0, distance ~0): if there are exactly
    # ``num_atoms`` close pairs and all are an atom with itself, there is no overlap.
    if np.count_nonzero(close) != num_atoms or (centre[close] != neighbor[close]).any():
        overlap = close & (centre != neighbor)
        if overlap.any():
            k = int(np.flatnonzero(overlap)[0])
            raise ValueError(
                f"atoms {centre[k]} and {neighbor[k]} overlap (distance {distance[k]:.2e} Å)"
            )
    return close


def _kth_distance(
    centre: np.ndarray, distance: np.ndarray, close: np.ndarray, num_atoms: int, k: int
) -> np.ndarray:
    """Each centre's ``k``-th smallest distance in Å without the atom itself (``inf`` where it
    has fewer neighbours), by one ``np.partition`` of a padded ``(num_atoms, most pairs of one
    centre)`` array. ``centre`` must be grouped in ascending order (as the kernel lists it)."""
    counts = np.bincount(centre, minlength=num_atoms)
    width = int(counts.max())
    if width < k:
        return np.full(num_atoms, np.inf)
    starts = np.zeros(num_atoms, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    column = np.arange(centre.shape[0], dtype=np.int64) - starts[centre]
    padded = np.full((num_atoms, width), np.inf)
    padded[centre, column] = distance
    padded[centre[close], column[close]] = np.inf  # each atom itself
    return np.partition(padded, k - 1, axis=1)[:, k - 1]


def _edge_keys(src: np.ndarray, dst: np.ndarray, image: np.ndarray) -> np.ndarray:
    """One comparable value per edge ``(i, j, n)`` (a byte string of five int64), for ``np.isin``."""
    rows = np.column_stack((src.astype(np.int64), dst.astype(np.int64), image.astype(np.int64)))
    return np.ascontiguousarray(rows).view(np.dtype((np.void, 5 * 8))).ravel()


def find_neighbors(
    positions: np.ndarray,
    lattice: np.ndarray,
    radius: float = DEFAULT_RADIUS,
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS,
    margin: float = 0.0,
) -> tuple[NeighborList, NeighborList]:
    """The nearest neighbours of every atom, and the candidates needed to re-select them.

    :param positions: ``(n_atoms, 3)`` Cartesian coordinates in Å.
    :param lattice: ``(3, 3)`` lattice vectors (rows) in Å.
    :param radius: cutoff in Å.
    :param max_neighbors: edges kept per atom.
    :param margin: largest displacement (Å) of any atom for which the candidates must suffice:
        after every atom moves by at most ``margin``, the new nearest neighbours are among
        ``selected`` + ``candidates``. A pair's distance changes by at most ``2·margin``, so the new
        ``max_neighbors``-th distance is at most ``d_k + 2·margin`` and every new neighbour was at
        most ``min(d_k + 4·margin, radius + 2·margin)`` away before.
    :returns: ``(selected, candidates)``: the edges of the graph, exactly the reference's (per
        atom, nearest first, ties in the kernel's order), and the other candidate edges (possibly
        empty; per atom, nearest first).

    Only the pairs that can be selected or be candidates are sorted: each centre's
    ``max_neighbors``-th distance ``d_k`` comes from one partition, and every pair up to
    ``d_k`` (plus the candidate band) is kept in the kernel's order, ties with ``d_k`` included,
    so the stable sort of this subset orders it exactly as that of the whole sphere.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    lattice = np.ascontiguousarray(lattice, dtype=np.float64)
    num_atoms = positions.shape[0]
    centre, neighbor, image, distance = find_points_in_spheres(
        positions, positions, r=radius, pbc=_PBC, lattice=lattice, tol=SELF_TOLERANCE
    )
    close = _self_pairs(centre, neighbor, distance, num_atoms)
    if (centre[1:] < centre[:-1]).any():  # the kernel groups by centre; stay exact if not
        by_centre = np.argsort(centre, kind="stable")
        centre, neighbor, image, distance = (
            a[by_centre] for a in (centre, neighbor, image, distance)
        )
        close = close[by_centre]
    kth = _kth_distance(centre, distance, close, num_atoms, max_neighbors)
    if margin > 0.0:
        search_radius = radius + 2.0 * margin
        bound = np.minimum(kth + (4.0 * margin + _BOUND_SLACK), search_radius + _BOUND_SLACK)
    else:
        bound = kth
    near = np.nonzero((distance <= bound[centre]) & ~close)[0]
    src, near_distance = centre[near], distance[near]
    # Stable: equal distances keep the kernel's order. ``src`` stays as it is (grouped).
    order = np.lexsort((near_distance, src))
    near, near_distance = near[order], near_distance[order]
    counts = np.bincount(src, minlength=num_atoms)
    starts = np.zeros(num_atoms, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    keep = np.arange(src.shape[0], dtype=np.int64) - starts[src] < max_neighbors

    def edges(mask: np.ndarray) -> NeighborList:
        """The pairs ``mask`` of the sorted subset, as stored (int32 atoms, int16 images)."""
        rows = near[mask]
        return NeighborList(
            src[mask].astype(np.int32),
            neighbor[rows].astype(np.int32),
            np.rint(image[rows]).astype(IMAGE_DTYPE),
            near_distance[mask],
        )

    selected = edges(keep)
    if margin <= 0.0:
        return selected, selected.take(np.zeros(0, dtype=np.int64))
    # Candidates within the radius: the rest of the sorted subset (already in candidate order).
    candidates = edges(~keep)
    # Only centres whose bound reaches beyond the radius need a wider search (its order does
    # not matter: the candidates are sorted again, and re-selection sorts them once more).
    wide = np.nonzero(bound > radius)[0]
    if wide.size == 0:
        return selected, candidates
    w_centre, w_neighbor, w_image, w_distance = find_points_in_spheres(
        positions,
        np.ascontiguousarray(positions[wide]),
        r=search_radius,
        pbc=_PBC,
        lattice=lattice,
        tol=SELF_TOLERANCE,
    )
    w_centre = wide[w_centre]
    # The shell beyond the radius (a band below it too, deduplicated, against rounding).
    shell = (w_distance > radius - _BOUND_SLACK) & (w_distance <= bound[w_centre])
    w_centre, w_neighbor, w_distance = w_centre[shell], w_neighbor[shell], w_distance[shell]
    w_image = np.rint(w_image[shell]).astype(IMAGE_DTYPE)
    outer = distance > radius - 2.0 * _BOUND_SLACK
    known = _edge_keys(centre[outer], neighbor[outer], np.rint(image[outer]).astype(IMAGE_DTYPE))
    new = ~np.isin(_edge_keys(w_centre, w_neighbor, w_image), known)
    candidates = NeighborList(
        np.concatenate([candidates.src, w_centre[new].astype(np.int32)]),
        np.concatenate([candidates.dst, w_neighbor[new].astype(np.int32)]),
        np.concatenate([candidates.image, w_image[new]]),
        np.concatenate([candidates.distance, w_distance[new]]),
    )
    return selected, candidates.take(order_edges(candidates.src, candidates.distance))
