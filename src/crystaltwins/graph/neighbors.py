"""Nearest-neighbour search with periodic images, exactly as CGCNN / Crystal Twins select edges.

The reference algorithm is pymatgen ``Structure.get_all_neighbors(radius)`` sorted by distance and
cut at ``max_neighbors`` per atom. We call the same compiled kernel that pymatgen uses
(:func:`pymatgen.optimization.neighbors.find_points_in_spheres`) on plain arrays, which skips the
construction of ``PeriodicNeighbor`` objects, and select the nearest neighbours with vectorised
NumPy.

**Tie rule.** Neighbours of one atom are ordered by distance rounded to
:data:`DISTANCE_RESOLUTION` (1e-6 Å), then by neighbour index, then by periodic image (x, then y,
then z). The reference keeps whatever order the kernel returns for equal distances, so at the
``max_neighbors``-th place, atoms at equal distance may be chosen differently; the distances of
the selected neighbours are always the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

#: Distances equal to within this many Å count as ties (see the tie rule above).
DISTANCE_RESOLUTION = 1e-6
#: Pairs closer than this (Å) are an atom and itself.
SELF_TOLERANCE = 1e-8

_PBC = np.ones(3, dtype=np.int64)


@dataclass
class NeighborList:
    """Directed edges of one crystal, grouped by centre atom and ordered by the tie rule.

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


def order_edges(
    src: np.ndarray, dst: np.ndarray, image: np.ndarray, distance: np.ndarray
) -> np.ndarray:
    """The permutation that sorts edges by centre, then by the tie rule."""
    rounded = np.rint(distance / DISTANCE_RESOLUTION).astype(np.int64)
    return np.lexsort((image[:, 2], image[:, 1], image[:, 0], dst, rounded, src))


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
    return (rank < max_neighbors) & (edges.distance <= radius)


def find_neighbors(
    positions: np.ndarray,
    lattice: np.ndarray,
    radius: float = 8.0,
    max_neighbors: int = 12,
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
    :returns: ``(selected, candidates)``: the edges of the graph (per atom, nearest first) and the
        other candidate edges (possibly empty), both ordered by the tie rule.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    lattice = np.ascontiguousarray(lattice, dtype=np.float64)
    num_atoms = positions.shape[0]
    search_radius = radius + 2.0 * margin
    centre, neighbor, image, distance = find_points_in_spheres(
        positions, positions, r=search_radius, pbc=_PBC, lattice=lattice, tol=SELF_TOLERANCE
    )
    close = distance <= SELF_TOLERANCE
    if close.any():
        overlap = close & (centre != neighbor)
        if overlap.any():
            k = int(np.flatnonzero(overlap)[0])
            raise ValueError(
                f"atoms {centre[k]} and {neighbor[k]} overlap (distance {distance[k]:.2e} Å)"
            )
        # An atom is not its own neighbour: push it past the search radius (kept finite for
        # the sort key below).
        distance = np.where(close, 2.0 * search_radius, distance)
    # Pass 1, cheap: order by centre then distance to find each centre's k-th distance, and keep
    # only the edges that can matter (most of the sphere is far beyond the k-th neighbour).
    order = np.argsort(centre * (2.0 * search_radius + 1.0) + distance)
    centre, distance = centre[order], distance[order]
    _, starts = rank_within_centre(centre, num_atoms)
    counts = np.diff(starts)
    has_k = counts >= max_neighbors
    kth = np.full(num_atoms, np.inf)
    kth[has_k] = distance[(starts[:-1] + max_neighbors - 1)[has_k]]
    kth[kth > radius] = np.inf
    # Ties at the k-th place must all be seen by the tie rule, hence the resolution margin.
    bound = np.minimum(kth + 4.0 * margin + 2.0 * DISTANCE_RESOLUTION, search_radius)
    keep = distance <= bound[centre]
    order = order[keep]
    centre, distance = centre[keep], distance[keep]
    neighbor, image = neighbor[order], image[order].astype(np.int16)
    # Pass 2, on the short list: the tie rule, then the nearest within the radius.
    order = order_edges(centre, neighbor, image, distance)
    edges = NeighborList(
        centre[order].astype(np.int32),
        neighbor[order].astype(np.int32),
        image[order],
        distance[order],
    )
    rank, _ = rank_within_centre(edges.src, num_atoms)
    selected = (rank < max_neighbors) & (edges.distance <= radius)
    if margin <= 0.0:
        return edges.take(selected), edges.take(np.zeros(0, dtype=np.int64))
    return edges.take(selected), edges.take(~selected)


def reselect_neighbors(
    positions: np.ndarray,
    lattice: np.ndarray,
    edges: NeighborList,
    num_atoms: int,
    radius: float,
    max_neighbors: int,
) -> NeighborList:
    """Recompute the distances of ``edges`` (selected + candidates) for moved atoms and keep the
    ``max_neighbors`` nearest within ``radius`` of each atom, by the same tie rule."""
    distance = edge_distances(positions, lattice, edges.src, edges.dst, edges.image)
    order = order_edges(edges.src, edges.dst, edges.image, distance)
    moved = NeighborList(edges.src[order], edges.dst[order], edges.image[order], distance[order])
    return moved.take(select_nearest(moved, num_atoms, radius, max_neighbors))
