"""Distance denoising: from a view whose atoms were moved by noise, predict how each edge's
length changed (denoising pre-training, in a form that suits an invariant encoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.models.pretext_heads import EdgeDistanceHead


def denoising_targets(view: CrystalGraphBatch) -> Tensor:
    """The clean length in Å of every edge of a view, before its atoms moved.

    :param view: a view made with a perturbation (``clean_edge_distance`` set).
    :returns: ``(n_edges,)`` float32.
    :raises ValueError: for a view whose atoms did not move.
    """
    if view.clean_edge_distance is None:
        raise ValueError(
            "denoise needs views whose atoms moved: add gn (Gaussian noise) or rp to --augment"
        )
    return view.clean_edge_distance


class DistanceDenoisingLoss(nn.Module):
    r"""Mean squared error of the predicted change of every edge's length, standardised.

    For every edge :math:`(i, j)` of a noisy view, the head sees
    :math:`[h_i, h_j, \mathrm{gaussian}(\tilde d_{ij})]` (the encoder's atom embeddings of the
    view and the noisy length) and predicts :math:`t_{ij}`, the change back to the clean length
    :math:`\Delta_{ij} = d_{ij} - \tilde d_{ij}` standardised over the batch's edges
    (:math:`t = (\Delta - \bar\Delta) / \sqrt{\mathrm{Var}\,\Delta + \epsilon}`, no gradient
    through the statistics). Predicting 0 gives a loss of about 1, whatever the noise level.

    Parameter-free: the regressor is a head of the pre-training module (:meth:`make_head`).
    An *atom-level* objective: called once per view as ``forward(atom_embeddings, view, head)``.

    :param eps: added to the variance of the changes, Å².
    """

    uses_atoms = True
    needs_augmentation = ("gn", "rp")

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)

    def make_head(self, atom_dim: int, num_elements: int, radius: float) -> nn.Module:
        """A fresh regressor ``[h_i, h_j, gaussian(d)] → scalar`` with Gaussians up to ``radius``."""
        return EdgeDistanceHead(atom_dim, atom_dim, dmax=radius)

    def standardised_change(self, view: CrystalGraphBatch) -> Tensor:
        """``(n_edges,)`` float32 targets: the standardised change of every edge's length."""
        change = denoising_targets(view).float() - view.edge_distance.float()
        var, mean = torch.var_mean(change, correction=0)
        return (change - mean) * torch.rsqrt(var + self.eps)

    def forward(self, atom_embeddings: Tensor, view: CrystalGraphBatch, head: nn.Module) -> Tensor:
        """Loss of one view.

        :param atom_embeddings: ``(n_atoms, A)`` the encoder's atom embeddings of ``view``.
        :param view: the noisy view (with ``clean_edge_distance``).
        :param head: the edge regressor.
        :returns: scalar.
        """
        target = self.standardised_change(view)
        predicted = head(atom_embeddings, view.edge_index, view.edge_distance)
        return F.mse_loss(predicted.float(), target)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
