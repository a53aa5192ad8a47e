"""Heads of the node- and edge-level pretext tasks of pre-training (masked-element prediction,
distance denoising).

They belong to the pre-training module (trained with the encoder, kept in its Lightning
checkpoints so that a resumed run continues them) and are left out of the pre-trained model
file: fine-tuning and embedding use the encoder only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crystaltwins.graph.settings import (
    DEFAULT_GAUSSIAN_DMAX,
    DEFAULT_GAUSSIAN_DMIN,
    DEFAULT_GAUSSIAN_STEP,
)
from crystaltwins.layers.gaussian import GaussianExpansion
from crystaltwins.models.heads import _MLPHead


class ElementHead(_MLPHead):
    """Element classifier ``Linear → Softplus → Linear`` on atom embeddings.

    :param in_dim: width ``A`` of the atom embeddings.
    :param hidden_dim: hidden width.
    :param num_elements: number of classes: the rows of the element table (class Z is element Z;
        class 0, a masked atom, is never a target).

    Input ``(n_atoms, A)``, output ``(n_atoms, num_elements)`` logits.
    """


class EdgeDistanceHead(nn.Module):
    """Scalar per edge from ``[h_i, h_j, gaussian(d_ij)]`` (``Linear → Softplus → Linear``).

    :param atom_dim: width ``A`` of the atom embeddings.
    :param hidden_dim: hidden width.
    :param dmax: last Gaussian centre in Å (the graph's radius).
    :param step: spacing (and width) of the Gaussians in Å.

    ``forward(atom_embeddings (n_atoms, A), edge_index (2, n_edges), distance (n_edges,) Å)``
    returns ``(n_edges,)``.
    """

    def __init__(
        self,
        atom_dim: int,
        hidden_dim: int,
        dmax: float = DEFAULT_GAUSSIAN_DMAX,
        step: float = DEFAULT_GAUSSIAN_STEP,
    ) -> None:
        super().__init__()
        self.gaussian = GaussianExpansion(DEFAULT_GAUSSIAN_DMIN, dmax, step)
        self.mlp = nn.Sequential(
            nn.Linear(2 * atom_dim + self.gaussian.num_features, hidden_dim),
            nn.Softplus(),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, atom_embeddings: Tensor, edge_index: Tensor, distance: Tensor) -> Tensor:
        centre = atom_embeddings.index_select(0, edge_index[0])
        neighbour = atom_embeddings.index_select(0, edge_index[1])
        # expanded from float32 lengths at least (half precision rounds them to ~0.03 Å near
        # 8 Å, the size of the noise to be undone), then in the embeddings' dtype
        dtype = atom_embeddings.dtype
        expanded = self.gaussian(distance.to(torch.promote_types(dtype, torch.float32))).to(dtype)
        return self.mlp(torch.cat([centre, neighbour, expanded], dim=1)).squeeze(1)
