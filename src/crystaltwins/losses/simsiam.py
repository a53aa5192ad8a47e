"""SimSiam objective (Chen & He 2021), as in the Crystal Twins code."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SimSiamLoss(nn.Module):
    r"""Symmetric negative cosine similarity with stop-gradient.

    .. math::

        \mathcal{L} = -\tfrac12\big[\cos(p_a, \mathrm{sg}(z_b)) + \cos(p_b, \mathrm{sg}(z_a))\big],
        \qquad p = \mathrm{predictor}(z)

    averaged over the batch. The loss has no parameters (as in lightly): the predictor is a head
    of the pre-trained model (:class:`~crystaltwins.models.SimSiamPredictor`, saved in its file),
    which the pre-training module applies to both projections because :attr:`uses_predictor`
    is set. In the Crystal Twins SimSiam the projector is the identity and the predictor is the
    network's ``fc_head``.

    The loss is per-sample, so no cross-rank gathering is needed under DDP.
    """

    #: The pre-training module passes ``predictor(z_a)`` and ``predictor(z_b)`` too.
    uses_predictor = True

    def forward(self, z_a: Tensor, z_b: Tensor, p_a: Tensor, p_b: Tensor) -> Tensor:
        """Loss of two views.

        :param z_a: ``(N, D)`` projections of the first view.
        :param z_b: ``(N, D)`` projections of the second view, same crystals, same order.
        :param p_a: ``(N, D)`` predictions from ``z_a``.
        :param p_b: ``(N, D)`` predictions from ``z_b``.
        :returns: scalar loss in ``[-1, 1]``.
        """
        if z_a.ndim != 2 or not z_a.shape == z_b.shape == p_a.shape == p_b.shape:
            raise ValueError(
                f"expected (N, D) views and predictions of equal shape, got {tuple(z_a.shape)}, "
                f"{tuple(z_b.shape)}, {tuple(p_a.shape)} and {tuple(p_b.shape)}"
            )
        sim_ab = F.cosine_similarity(p_a, z_b.detach(), dim=1).mean()
        sim_ba = F.cosine_similarity(p_b, z_a.detach(), dim=1).mean()
        return -0.5 * (sim_ab + sim_ba)
