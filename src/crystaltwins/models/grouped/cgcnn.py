"""K CGCNN (or OGCNN) property models stacked (:class:`~.base.StackedModels`).

The forward pass of :class:`~crystaltwins.models.cgcnn.CGCNNEncoder` (and of
:class:`~crystaltwins.models.ogcnn.OGCNNEncoder`: the same convolutions on element + orbital-field
matrix inputs, padded edges left out of the field) for every member at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.grouped.base import MemberBatch, StackedModels
from crystaltwins.models.ogcnn import OFM_DISTANCE_POWER, OGCNNEncoder


class GroupedPropertyModels(StackedModels):
    """K CGCNN or OGCNN (encoder, property head) pairs with stacked parameters.

    :param encoders: the members' :class:`CGCNNEncoder` or :class:`OGCNNEncoder` (one class,
        the same ``config``; element tables may differ).
    :param heads: their :class:`~crystaltwins.models.heads.PropertyHead` (same sizes).
    """

    encoder_types = (CGCNNEncoder, OGCNNEncoder)

    def __init__(
        self, encoders: Sequence[CGCNNEncoder | OGCNNEncoder], heads: Sequence[nn.Module]
    ) -> None:
        super().__init__(encoders, heads)
        first = encoders[0]
        self.n_conv = first.config["n_conv"]
        self.ofm = isinstance(first, OGCNNEncoder)
        # (n_z, 32) valence one-hot rows of the OFM, the same for every member
        self.valence = first.valence if self.ofm else None

    def _move_extra(self, move: Callable[[Tensor], Tensor]) -> None:
        if self.valence is not None:
            self.valence = move(self.valence)

    def _conv(self, x: Tensor, edge_fea: Tensor, batch: MemberBatch, i: int) -> Tensor:
        """One CGCNN convolution of every member, ``(K, N, A)`` → ``(K, N, A)``."""
        k, n, a = x.shape
        name = f"encoder.convs.{i}"
        weight = self.params[f"{name}.fc_full.weight"]  # (K, 2A, 2A + G)
        h_i = self._linear(x, f"{name}.fc_full", weight[:, :, :a])  # bias once, with the centre
        h_j = torch.bmm(x, weight[:, :, a : 2 * a].transpose(1, 2))
        z = torch.bmm(edge_fea, weight[:, :, 2 * a :].transpose(1, 2))  # (K, E, 2A)
        z = z + self._gather(h_i, batch.centre) + self._gather(h_j, batch.neighbour)
        z = self._batch_norm(z, f"{name}.bn1", batch.edge_mask, batch.edge_counts)
        nbr_filter, nbr_core = z.chunk(2, dim=2)
        message = torch.sigmoid(nbr_filter) * F.softplus(nbr_core) * batch.edge_mask.unsqueeze(2)
        summed = self._scatter_sum(message, batch.centre, n)
        summed = self._batch_norm(summed, f"{name}.bn2", batch.atom_mask, batch.atom_counts)
        return F.softplus(x + summed)

    def _ofm_inputs(self, batch: MemberBatch) -> Tensor:
        """OGCNN's atom inputs ``(K, N, A)``: ``embedding2(softplus(embedding1([element ‖
        OFM])))``, the OFM (:func:`~crystaltwins.models.ogcnn.orbital_field_matrix`) summed over
        each member's real edges only."""
        k, n = batch.atomic_numbers.shape
        w = self.params["encoder.embedding1.weight"]  # (K, hot, F + 1056)
        n_elem = self.tables.shape[2]
        element = torch.baddbmm(
            self.params["encoder.embedding1.bias"].unsqueeze(1),
            self.tables.to(self.dtype),
            w[:, :, :n_elem].transpose(1, 2),
        )  # (K, n_z, hot)
        orbitals = self.valence.to(self.dtype).index_select(0, batch.atomic_numbers.view(-1))
        mask = batch.edge_mask.view(-1, 1)
        distance = torch.where(mask > 0, batch.edge_distance.view(-1, 1).to(self.dtype), 1.0)
        weight = distance.pow(-OFM_DISTANCE_POWER) * mask  # padded edges weigh nothing
        field = torch.zeros_like(orbitals).index_add_(
            0, batch.centre, orbitals.index_select(0, batch.neighbour) * weight
        )
        right = torch.cat((torch.ones_like(field[:, :1]), field), dim=1)  # (K N, 33)
        ofm = (orbitals.unsqueeze(2) * right.unsqueeze(1)).reshape(k, n, -1)  # (K, N, 1056)
        hidden = torch.baddbmm(
            self._element_rows(element, batch), ofm, w[:, :, n_elem:].transpose(1, 2)
        )
        return self._linear(F.softplus(hidden), "encoder.embedding2")

    def embeddings(self, batch: MemberBatch) -> Tensor:
        """Every member's crystal embeddings ``(K, B, H)`` (padded crystals: values to ignore)."""
        if self.ofm:
            x = self._ofm_inputs(batch)
        else:
            tables = self._linear(self.tables.to(self.dtype), "encoder.embedding")  # (K, n_z, A)
            x = self._element_rows(tables, batch)
        if self.n_conv:
            edge_fea = self.gaussian(batch.edge_distance.to(self.dtype))  # (K, E, G)
            for i in range(self.n_conv):
                x = self._conv(x, edge_fea, batch, i)
        pooled = self._crystal_sum(x, batch) / batch.crystal_atoms.unsqueeze(2)
        return F.softplus(self._linear(F.softplus(pooled), "encoder.conv_to_fc"))
