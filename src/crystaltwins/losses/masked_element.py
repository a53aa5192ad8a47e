"""Masked-element prediction (attribute masking of Hu et al. 2020, "Strategies for
pre-training graph neural networks"): predict the element of the atoms masked in a view."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.models.pretext_heads import ElementHead


def masked_element_targets(view: CrystalGraphBatch) -> tuple[Tensor, Tensor]:
    """The masked atoms of a view and every atom's true element.

    :param view: a view made with atom masking (``original_atomic_numbers`` set).
    :returns: ``masked`` ``(n_atoms,)`` bool and ``elements`` ``(n_atoms,)`` int64 true Z.
    :raises ValueError: for a view without atom masking.
    """
    if view.original_atomic_numbers is None:
        raise ValueError(
            "masked_element needs views with masked atoms: add am to --augment "
            "(atom masking keeps their true elements)"
        )
    elements = view.original_atomic_numbers
    return view.atomic_numbers != elements, elements


class MaskedElementLoss(nn.Module):
    r"""Cross-entropy of the element classifier over the masked atoms of a view.

    .. math::

        \mathcal{L} = \frac{1}{|M|} \sum_{i \in M} -\log \mathrm{softmax}(W h_i)_{Z_i}

    with :math:`M` the atoms masked in the view (their element features are zero, so the
    encoder sees only their neighbourhood), :math:`h_i` the encoder's atom embeddings of the
    view and :math:`Z_i` the true element. A view without masked atoms gives 0.

    Parameter-free: the classifier is a head of the pre-training module
    (:meth:`make_head`), passed in by it. An *atom-level* objective: called once per view as
    ``forward(atom_embeddings, view, head)``.
    """

    #: Called with the encoder's atom embeddings, the view and the head (not projections).
    uses_atoms = True
    #: Augmentations (any one) the views need.
    needs_augmentation = ("am",)

    def make_head(self, atom_dim: int, num_elements: int, radius: float) -> nn.Module:
        """A fresh classifier ``(n_atoms, atom_dim) → (n_atoms, num_elements)`` logits."""
        return ElementHead(atom_dim, atom_dim, num_elements)

    def forward(self, atom_embeddings: Tensor, view: CrystalGraphBatch, head: nn.Module) -> Tensor:
        """Loss of one view.

        :param atom_embeddings: ``(n_atoms, A)`` the encoder's atom embeddings of ``view``.
        :param view: the view (with ``original_atomic_numbers``).
        :param head: the element classifier.
        :returns: scalar, the mean cross-entropy over the masked atoms.
        """
        masked, elements = masked_element_targets(view)
        # every atom through the (small) head, the masked ones counted: no host sync on a count
        per_atom = F.cross_entropy(head(atom_embeddings).float(), elements, reduction="none")
        weight = masked.to(per_atom.dtype)
        return (per_atom * weight).sum() / weight.sum().clamp_min(1.0)
