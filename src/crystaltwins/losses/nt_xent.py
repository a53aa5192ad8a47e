"""NT-Xent objective of SimCLR (Chen et al. 2020): normalised-temperature cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.losses.distributed import gathered_views


class NTXentLoss(nn.Module):
    r"""SimCLR's contrastive loss over the ``2N`` projections of ``N`` crystals' two views.

    .. math::

        \ell(i, j) = -\log \frac{\exp(s_{ij}/\tau)}{\sum_{k \ne i} \exp(s_{ik}/\tau)},
        \qquad s_{ij} = \frac{z_i \cdot z_j}{\lVert z_i\rVert \lVert z_j\rVert}

    averaged over both directions of every positive pair (``a → b`` and ``b → a``); the
    negatives of a sample are the other ``2N - 2`` projections of the batch, both views.

    Parameter-free. Under ``torch.distributed`` (world size > 1) with ``gather_distributed``
    the views are gathered from every rank first (:func:`gather_from_all_ranks`): every other
    rank's crystals are negatives too, and DDP's gradient averaging gives the gradient of the
    single-process loss on the joint batch.

    :param temperature: :math:`\tau` (SimCLR: 0.1 works well with large batches).
    :param gather_distributed: gather the views across ranks when running distributed.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """Loss of two views.

        :param z_a: ``(n_local, D)`` projections of the first view.
        :param z_b: ``(n_local, D)`` projections of the second view, same crystals, same order.
        :returns: scalar loss, at least 0.
        """
        z_a, z_b = gathered_views(
            z_a,
            z_b,
            self.gather_distributed,
            "NT-Xent needs at least 2 samples (the negatives are the others)",
        )
        n = z_a.shape[0]
        z = F.normalize(torch.cat([z_a, z_b]), dim=1)
        logits = z @ z.t() / self.temperature
        self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_pairs, float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(logits, positives)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
