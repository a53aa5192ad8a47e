"""K GIN property models stacked (:class:`~.base.StackedModels`): the forward pass of
:class:`~crystaltwins.models.gin.GINEncoder` (GINE layers, distance features) for every member at
once, with the same formulation (the edge term from per-atom sums of the Gaussian features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crystaltwins.models.gin import GINEncoder
from crystaltwins.models.grouped.base import MemberBatch, StackedModels


class GroupedGIN(StackedModels):
    """K :class:`GINEncoder` + property head pairs with stacked parameters."""

    encoder_types = (GINEncoder,)

    def embeddings(self, batch: MemberBatch) -> Tensor:
        """Every member's crystal embeddings ``(K, B, feat_dim)``."""
        n = batch.atomic_numbers.shape[1]
        tables = self._linear(self.tables.to(self.dtype), "encoder.embedding")  # (K, n_z, D)
        x = self._element_rows(tables, batch)
        edge_mask = batch.edge_mask.to(self.dtype).unsqueeze(2)  # (K, E, 1)
        gaussians = self.gaussian(batch.edge_distance.to(self.dtype)) * edge_mask
        # Σ_j u_ij and deg_i once: Σ_j Linear_l(u_ij) = W_l Σ_j u_ij + deg_i b_l for every layer
        gaussian_sum = self._scatter_sum(gaussians, batch.centre, n)  # (K, N, G)
        degree = self._scatter_sum(edge_mask, batch.centre, n)  # (K, N, 1)
        layers = self.config["n_layers"]
        self_loop = self.params["encoder.self_loop"]  # (K, layers, D)
        for layer in range(layers):
            name = f"encoder.edge_embeddings.{layer}"
            bias = self.params[f"{name}.bias"].unsqueeze(1)  # (K, 1, D)
            weight = self.params[f"{name}.weight"]  # (K, D, G)
            edge_term = torch.baddbmm(bias * degree, gaussian_sum, weight.transpose(1, 2))
            neighbours = self._scatter_sum(
                self._gather(x, batch.neighbour) * edge_mask, batch.centre, n
            )
            aggregated = neighbours + x + edge_term + self_loop[:, layer].unsqueeze(1)
            hidden = F.relu(self._linear(aggregated, f"encoder.mlps.{layer}.0"))
            h = self._linear(hidden, f"encoder.mlps.{layer}.2")
            h = self._batch_norm(
                h, f"encoder.batch_norms.{layer}", batch.atom_mask, batch.atom_counts
            )
            x = h if layer == layers - 1 else F.relu(h)
        atoms = self._linear(x, "encoder.feat_lin")
        summed = self._crystal_sum(atoms, batch)
        if self.config["readout"] == "sum":
            return summed
        return summed / batch.crystal_atoms.unsqueeze(2)
