"""K GATGNN property models stacked (:class:`~.base.StackedModels`): the forward pass of
:class:`~crystaltwins.models.gatgnn.GATGNNEncoder` (AGAT layers, composition attention pooling)
for every member at once; the edge and atom softmaxes leave padded rows out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crystaltwins.models.gatgnn import (
    EDGE_NEGATIVE_SLOPE,
    N_COMPOSITION_ELEMENTS,
    GATGNNEncoder,
)
from crystaltwins.models.grouped.base import MemberBatch, StackedModels, masked_segment_softmax


class GroupedGATGNN(StackedModels):
    """K :class:`GATGNNEncoder` + property head pairs with stacked parameters."""

    encoder_types = (GATGNNEncoder,)

    def _attention(self, x: Tensor, edge: Tensor, batch: MemberBatch, layer: int) -> Tensor:
        """One AGAT layer (:class:`~crystaltwins.models.gatgnn.AugmentedGraphAttention`) of every
        member: ``(K, N, in)`` → ``(K, N, F)``."""
        k, n, width = x.shape
        name = f"encoder.node_att.{layer}"
        heads = self.config["heads"]
        w = self.params[f"{name}.W"]  # (K, in + edge, heads F)
        atom_part = torch.bmm(x, w[:, :width])  # (K, N, heads F)
        edge_part = torch.bmm(edge, w[:, width:])  # (K, E, heads F)
        e = edge.shape[1]
        f = atom_part.shape[2] // heads
        x_i = F.softplus(self._gather(atom_part, batch.centre) + edge_part).view(k, e, heads, f)
        x_j = F.softplus(self._gather(atom_part, batch.neighbour) + edge_part).view(k, e, heads, f)
        att = self.params[f"{name}.att"]  # (K, 1, heads, 2F)
        score = (x_i * att[..., :f]).sum(-1) + (x_j * att[..., f:]).sum(-1)  # (K, E, heads)
        alpha = F.softplus(
            self._batch_norm(F.softplus(score), f"{name}.bn1", batch.edge_mask, batch.edge_counts)
        )
        alpha = masked_segment_softmax(
            alpha.reshape(k * e, heads), batch.centre, batch.edge_mask.view(-1), k * n
        ).view(k, e, heads, 1)
        summed = self._scatter_sum(x_j * alpha, batch.centre, n)  # (K, N, heads, F)
        return summed.mean(dim=2) + self.params[f"{name}.bias"].unsqueeze(1)

    def _composition(self, batch: MemberBatch) -> Tensor:
        """``(K, B, 103)`` fraction of each element H..Lr among each crystal's atoms."""
        z = batch.atomic_numbers
        known = ((z >= 1) & (z <= N_COMPOSITION_ELEMENTS)).to(self.dtype)
        one_hot = F.one_hot((z - 1).clamp(0, N_COMPOSITION_ELEMENTS - 1), N_COMPOSITION_ELEMENTS)
        one_hot = one_hot.to(self.dtype) * known.unsqueeze(2)
        return self._crystal_sum(one_hot, batch) / batch.crystal_atoms.unsqueeze(2)

    def embeddings(self, batch: MemberBatch) -> Tensor:
        """Every member's crystal embeddings ``(K, B, neurons)``."""
        k, n = batch.atomic_numbers.shape
        tables = self._linear(self.tables.to(self.dtype), "encoder.embed_n")  # (K, n_z, H)
        x = self._element_rows(tables, batch)
        layers = self.config["n_layers"]
        if layers:
            gaussians = self.gaussian(batch.edge_distance.to(self.dtype))  # (K, E, G)
            edge = F.leaky_relu(self._linear(gaussians, "encoder.embed_e"), EDGE_NEGATIVE_SLOPE)
            for layer in range(layers):
                out = self._attention(x, edge, batch, layer)
                out = self._batch_norm(
                    out, f"encoder.batch_norm.{layer}", batch.atom_mask, batch.atom_counts
                )
                x = F.softplus(out)
        c = batch.crystal_mask.shape[1]
        composition = self._gather(self._composition(batch), batch.crystal)  # (K, N, 103)
        per_atom = torch.cat((x, composition), dim=2)
        hidden = F.softplus(self._linear(per_atom, "encoder.comp_node_layer"))
        score = self._linear(hidden, "encoder.comp_atten_layer")  # (K, N, 1)
        weights = masked_segment_softmax(
            score.reshape(k * n, 1), batch.crystal, batch.atom_mask.view(-1), k * c
        ).view(k, n, 1)
        y = self._crystal_sum(x * weights, batch)  # (K, B, H)
        if self.config["hidden_layers"]:
            y = F.softplus(
                self._linear(F.softplus(self._linear(y, "encoder.linear1")), "encoder.linear2")
            )
        return y
