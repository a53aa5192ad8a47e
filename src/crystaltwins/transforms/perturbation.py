"""Random perturbation (RP): every atom moved, then the nearest neighbours re-selected exactly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from crystaltwins.graph.batch import GraphArrays
from crystaltwins.graph.neighbors import within_cutoff
from crystaltwins.graph.settings import (
    DEFAULT_PERTURBATION,
    DEFAULT_PERTURBATION_MIN,
    GraphSettings,
)
from crystaltwins.transforms.base import BatchTransform


def random_displacements(
    num_atoms: int, distance: float, min_distance: float | None, rng: np.random.Generator
) -> np.ndarray:
    """``(num_atoms, 3)`` random vectors in Å, as pymatgen ``Structure.perturb``: a uniformly
    random direction, length ``distance`` (or uniform in ``[min_distance, distance]``)."""
    directions = rng.normal(size=(num_atoms, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if min_distance is None:
        lengths = np.full((num_atoms, 1), distance)
    else:
        lengths = rng.uniform(min_distance, distance, size=(num_atoms, 1))
    return directions * lengths


class RandomPerturbation(BatchTransform):
    """Move every atom by a random vector and rebuild the edges exactly.

    Each atom moves in a random direction by a length uniform in ``[min_distance, distance]``
    Å, as pymatgen's ``PerturbStructureTransformation(distance=0.05, min_distance=0.0)`` of the
    Crystal Twins code; with ``min_distance=None`` every atom moves exactly ``distance`` Å
    (pymatgen's ``Structure.perturb(distance)``). The nearest ``max_neighbors`` within ``radius`` are then
    re-selected from the cached candidate edges, which gives the same graph as rebuilding it from
    the perturbed structure, as long as ``distance`` does not exceed the cache's
    ``perturbation_margin``. A view moved already (RP, then GN) is moved again from where it
    is, its edges re-selected from the same pool (edges and candidates), exact as long as the
    moves together stay within the margin (checked: ``ValueError`` otherwise).
    """

    def __init__(
        self,
        distance: float = DEFAULT_PERTURBATION,
        min_distance: float | None = DEFAULT_PERTURBATION_MIN,
        settings: GraphSettings | None = None,
    ) -> None:
        if distance < 0 or (min_distance is not None and not 0 <= min_distance <= distance):
            raise ValueError(f"need 0 <= min_distance <= distance, got {min_distance}, {distance}")
        self.distance = distance
        self.min_distance = min_distance
        self.settings = settings or GraphSettings()
        if distance > self.settings.perturbation_margin + 1e-12:
            raise ValueError(
                f"perturbation of {distance} Å exceeds the graph cache's perturbation_margin "
                f"({self.settings.perturbation_margin} Å): rebuild the cache with a larger margin"
            )

    def displacements(self, num_atoms: int, rng: np.random.Generator) -> np.ndarray:
        """``(num_atoms, 3)`` random moves in Å, none longer than :attr:`distance`."""
        return random_displacements(num_atoms, self.distance, self.min_distance, rng)

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        """Every atom of the batch moved, the edges re-selected: one distance computation and
        one sort.

        Ordered by (centre, distance), stably (:func:`~crystaltwins.graph.neighbors.order_edges`),
        the nearest ``max_neighbors`` within the radius kept. After a random
        displacement the only exact ties left are images of an atom and itself at equal
        ``|n·L|``: the same atom at the same distance, so either choice gives the same features.
        """
        settings = self.settings
        positions = arrays.positions + self.displacements(arrays.positions.shape[0], rng)
        if arrays.clean_positions is not None:  # moved before: the pool covers the moves' sum
            moved = np.linalg.norm(positions - arrays.clean_positions, axis=1)
            if moved.size and moved.max() > settings.perturbation_margin + 1e-9:
                raise ValueError(
                    f"atoms moved {moved.max():.3g} Å in all, more than the graph cache's "
                    f"perturbation_margin ({settings.perturbation_margin} Å): rebuild the cache "
                    "with a margin of at least the moves' sum"
                )
        src = np.concatenate([arrays.edge_src, arrays.cand_src])
        dst = np.concatenate([arrays.edge_dst, arrays.cand_dst])
        shift = np.concatenate([arrays.edge_shift, arrays.cand_shift])
        vectors = positions[dst] + shift - positions[src]
        distance = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        order = np.argsort(
            src * (2.0 * settings.radius + 1.0) + np.minimum(distance, 2.0 * settings.radius),
            kind="stable",
        )
        src, distance = src[order], distance[order]
        counts = np.bincount(src, minlength=positions.shape[0])
        starts = np.zeros(positions.shape[0], dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        rank = np.arange(src.shape[0]) - starts[src]
        keep = (rank < settings.max_neighbors) & within_cutoff(distance, settings.radius)
        kept, rest = order[keep], order[~keep]
        clean = arrays.positions if arrays.clean_positions is None else arrays.clean_positions
        return replace(
            arrays,
            positions=positions,
            clean_positions=clean,
            edge_src=src[keep],
            edge_dst=dst[kept],
            edge_shift=shift[kept],
            edge_distance=distance[keep],
            # the pool stays whole (edges + candidates) for a later move
            cand_src=src[~keep],
            cand_dst=dst[rest],
            cand_shift=shift[rest],
        )

    def __repr__(self) -> str:
        return f"RandomPerturbation(distance={self.distance}, min_distance={self.min_distance})"


class GaussianNoise(RandomPerturbation):
    """Move every atom by Gaussian noise and rebuild the edges exactly (denoising pre-training).

    Each Cartesian component of a move is drawn from ``N(0, sigma²)``; a move longer than
    ``max_distance`` (default ``3·sigma``: 2.9 % of the moves of a 3-D Gaussian) is shortened to
    that length, so that the cached candidate neighbours still give the exact new neighbours:
    ``max_distance`` may not exceed the cache's ``perturbation_margin``. The view keeps the
    positions before the move, and with them every kept edge's clean length
    (:meth:`~crystaltwins.graph.batch.GraphArrays.clean_edge_distance`).

    :param sigma: standard deviation of each component of a move, Å.
    :param max_distance: longest move in Å; ``None``: ``3·sigma``.
    :param settings: the graph cache's settings.
    """

    #: Longest move, in units of ``sigma``, when ``max_distance`` is not given.
    TRUNCATION = 3.0

    def __init__(
        self,
        sigma: float = 0.1,
        max_distance: float | None = None,
        settings: GraphSettings | None = None,
    ) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        longest = self.TRUNCATION * self.sigma if max_distance is None else float(max_distance)
        if not longest > 0:
            raise ValueError(f"max_distance must be positive, got {max_distance}")
        super().__init__(longest, None, settings)

    def displacements(self, num_atoms: int, rng: np.random.Generator) -> np.ndarray:
        moves = rng.normal(scale=self.sigma, size=(num_atoms, 3))
        length = np.linalg.norm(moves, axis=1, keepdims=True)
        return moves * np.minimum(1.0, self.distance / np.maximum(length, 1e-300))

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma}, max_distance={self.distance})"
