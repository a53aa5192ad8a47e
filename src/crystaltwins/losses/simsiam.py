"""SimSiam objective (Chen & He 2021), as in the Crystal Twins code."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.models.heads import SimSiamPredictor


class SimSiamLoss(nn.Module):
    r"""Symmetric negative cosine similarity with a predictor and stop-gradient.

    .. math::

        \mathcal{L} = -\tfrac12\big[\cos(p_a, \mathrm{sg}(z_b)) + \cos(p_b, \mathrm{sg}(z_a))\big],
        \qquad p = \mathrm{predictor}(z)

    averaged over the batch. The objective *owns* the predictor (its parameters belong to the
    objective; the training code must optimise ``objective.parameters()`` together with the
    model's). In the Crystal Twins SimSiam the projector is the identity (``z`` is the encoder
    output) and the predictor is the network's ``fc_head``
    (``Linear → Softplus → Linear``), whose published weights load into :class:`SimSiamPredictor`.

    The loss is per-sample, so no cross-rank gathering is needed under DDP.

    :param dim: width ``D`` of the projections (used to build the default predictor).
    :param hidden_dim: hidden width of the default predictor; defaults to ``dim``.
    :param predictor: a predictor module ``(N, D) → (N, D)`` to use instead of a fresh
        :class:`SimSiamPredictor`.
    """

    def __init__(
        self, dim: int = 256, hidden_dim: int | None = None, predictor: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.predictor = SimSiamPredictor(dim, hidden_dim) if predictor is None else predictor

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Loss of two views.

        :param z_a: ``(N, D)`` projections of the first view.
        :param z_b: ``(N, D)`` projections of the second view, same crystals, same order.
        :returns: scalar loss in ``[-1, 1]``.
        """
        if z_a.ndim != 2 or z_a.shape != z_b.shape:
            raise ValueError(
                f"expected two (N, D) views of equal shape, got {tuple(z_a.shape)} and "
                f"{tuple(z_b.shape)}"
            )
        p_a = self.predictor(z_a)
        p_b = self.predictor(z_b)
        sim_ab = F.cosine_similarity(p_a, z_b.detach(), dim=1).mean()
        sim_ba = F.cosine_similarity(p_b, z_a.detach(), dim=1).mean()
        return -0.5 * (sim_ab + sim_ba)
