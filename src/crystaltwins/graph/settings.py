"""Settings of the crystal graph (Crystal Twins / CGCNN defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Neighbour cutoff in Å (CGCNN / Crystal Twins).
DEFAULT_RADIUS = 8.0
#: Neighbours kept per atom, the nearest first (CGCNN / Crystal Twins).
DEFAULT_MAX_NEIGHBORS = 12
#: CT's random perturbation in Å (the augmentation's default, and the cache's margin for it).
DEFAULT_PERTURBATION = 0.05
#: Shortest move of the random perturbation (RP), Å: lengths uniform in
#: ``[DEFAULT_PERTURBATION_MIN, DEFAULT_PERTURBATION]``, as the Crystal Twins code's perturber.
DEFAULT_PERTURBATION_MIN = 0.0
#: CGCNN's Gaussian expansion of the edge distances: centres ``dmin .. dmax`` every ``step`` Å
#: (41 features), width ``step``.
DEFAULT_GAUSSIAN_DMIN = 0.0
DEFAULT_GAUSSIAN_DMAX = 8.0
DEFAULT_GAUSSIAN_STEP = 0.2


@dataclass(frozen=True)
class GraphSettings:
    """How a crystal becomes a graph.

    :param radius: neighbour cutoff in Å (CGCNN/CT: 8).
    :param max_neighbors: neighbours kept per atom, the nearest first (CGCNN/CT: 12).
    :param perturbation_margin: largest atom displacement in Å for which the cache keeps enough
        candidate neighbours beyond the ``max_neighbors``-th to re-select the nearest ones exactly
        after every atom moves (CT's random perturbation: 0.05). ``0`` keeps no candidates.
    :param gaussian_dmin: first Gaussian centre in Å.
    :param gaussian_dmax: last Gaussian centre in Å; ``None``: the radius (CGCNN's
        ``GaussianDistance(dmin, dmax=radius, step)``: 41 features at 8 Å; a fixed 8 would give
        every edge beyond ~8.5 Å the same near-zero features).
    :param gaussian_step: spacing of the Gaussian centres in Å.
    :param gaussian_width: Gaussian width ``var`` in Å (CGCNN uses the step).
    """

    radius: float = DEFAULT_RADIUS
    max_neighbors: int = DEFAULT_MAX_NEIGHBORS
    perturbation_margin: float = DEFAULT_PERTURBATION
    gaussian_dmin: float = DEFAULT_GAUSSIAN_DMIN
    gaussian_dmax: float | None = None
    gaussian_step: float = DEFAULT_GAUSSIAN_STEP
    gaussian_width: float = DEFAULT_GAUSSIAN_STEP

    def __post_init__(self) -> None:
        if self.gaussian_dmax is None:
            object.__setattr__(self, "gaussian_dmax", float(self.radius))
        if self.radius <= 0:
            raise ValueError(f"radius must be positive, got {self.radius}")
        if self.max_neighbors < 1:
            raise ValueError(f"max_neighbors must be at least 1, got {self.max_neighbors}")
        if self.perturbation_margin < 0:
            raise ValueError(f"perturbation_margin must be >= 0, got {self.perturbation_margin}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> GraphSettings:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})

    def cache_key(self) -> dict[str, float | int]:
        """The settings that change what a graph cache holds (the Gaussian grid does not)."""
        return {
            "radius": self.radius,
            "max_neighbors": self.max_neighbors,
            "perturbation_margin": self.perturbation_margin,
        }
