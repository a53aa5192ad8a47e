"""Gaussian expansion of interatomic distances (the CGCNN edge features)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from crystaltwins.graph.settings import (
    DEFAULT_GAUSSIAN_DMAX,
    DEFAULT_GAUSSIAN_DMIN,
    DEFAULT_GAUSSIAN_STEP,
)

#: Features below ``exp(-CUTOFF_EXPONENT)`` ≈ 9.4e-14 are set to exactly zero.
CUTOFF_EXPONENT = 30.0


class GaussianExpansion(nn.Module):
    r"""Expand distances on a grid of Gaussians, as CGCNN's ``GaussianDistance``.

    .. math:: u_k(d) = \exp\left(-\frac{(d - \mu_k)^2}{\sigma^2}\right)

    with centres ``np.arange(dmin, dmax + step, step)`` (41 centres for the defaults) and
    :math:`\sigma` = ``var`` (``step`` when not given). Note that, as in CGCNN, ``var`` divides
    squared: it is a width, not a variance.

    Features smaller than ``exp(-30)`` ≈ 9.4e-14 are set to exactly zero (CGCNN keeps them,
    down to float32 denormals). The difference is far below float32 resolution of the other
    features, and it keeps denormal numbers, which are very slow on CPUs, out of every product
    downstream. It also lets :meth:`banded` describe the features exactly.

    The centres are a non-persistent buffer: they follow the module across devices but are
    rebuilt from the constructor arguments rather than stored in ``state_dict`` (the published
    checkpoints do not contain them).

    :param dmin: first centre, Å.
    :param dmax: last centre, Å (included, as in CGCNN).
    :param step: spacing of the centres, Å.
    :param var: width :math:`\sigma` in Å; defaults to ``step``.
    """

    centres: Tensor

    def __init__(
        self,
        dmin: float = DEFAULT_GAUSSIAN_DMIN,
        dmax: float = DEFAULT_GAUSSIAN_DMAX,
        step: float = DEFAULT_GAUSSIAN_STEP,
        var: float | None = None,
    ) -> None:
        super().__init__()
        if dmin >= dmax:
            raise ValueError(f"dmin ({dmin}) must be smaller than dmax ({dmax})")
        if dmax - dmin <= step:
            raise ValueError(f"step ({step}) must be smaller than dmax - dmin ({dmax - dmin})")
        self.dmin = float(dmin)
        self.dmax = float(dmax)
        self.step = float(step)
        self.var = float(step if var is None else var)
        if self.var <= 0:
            raise ValueError(f"var must be positive, got {self.var}")
        centres = np.arange(dmin, dmax + step, step)
        self.register_buffer(
            "centres", torch.as_tensor(centres, dtype=torch.float32), persistent=False
        )

    @property
    def num_features(self) -> int:
        """Number of Gaussians ``K``."""
        return int(self.centres.shape[0])

    @property
    def band_width(self) -> int:
        """Centres kept per distance by :meth:`banded` (11 for the defaults)."""
        half = math.ceil(math.sqrt(CUTOFF_EXPONENT) * self.var / self.step - 0.5)
        return min(2 * max(half, 0) + 1, self.num_features)

    def banded(self, distances: Tensor) -> tuple[Tensor, Tensor]:
        """The features of every distance that are not negligible, as a band of centres.

        The ``W`` = :attr:`band_width` centres around the nearest one (shifted inside the grid
        at its ends); every feature left out is zero in :meth:`forward` (below ``exp(-30)``),
        and the kept values are computed exactly as :meth:`forward` computes them, so that
        ``zeros(E, K).scatter_(1, index, value)`` equals ``forward(distances)``.

        :param distances: ``(E,)`` distances in Å.
        :returns: ``(index, value)``, each ``(E, W)``: centre indices (int64, distinct per row)
            and feature values.
        """
        k, w = self.num_features, self.band_width
        if w >= k:
            index = torch.arange(k, device=distances.device).expand(distances.shape[0], k)
        else:
            nearest = torch.round((distances - self.dmin) / self.step)
            start = (nearest.long() - w // 2).clamp_(0, k - w)
            index = start.unsqueeze(1) + torch.arange(w, device=distances.device)
        return index, self._features(distances, self.centres.to(distances.dtype)[index])

    def _features(self, distances: Tensor, centres: Tensor) -> Tensor:
        exponent = (distances.unsqueeze(-1) - centres).square().mul(-1.0 / self.var**2)
        return torch.exp(exponent.masked_fill(exponent < -CUTOFF_EXPONENT, -math.inf))

    def forward(self, distances: Tensor) -> Tensor:
        """Expand distances.

        :param distances: ``(E,)`` distances in Å (any leading shape is accepted).
        :returns: ``(E, K)`` Gaussian features, same dtype as ``distances``.
        """
        return self._features(distances, self.centres.to(distances.dtype))

    def extra_repr(self) -> str:
        return f"dmin={self.dmin}, dmax={self.dmax}, step={self.step}, var={self.var}, K={self.num_features}"
