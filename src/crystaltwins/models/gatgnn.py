"""GATGNN encoder: augmented graph attention layers and global attention pooling.

S.-Y. Louis, Y. Zhao, A. Nasiri, X. Wang, Y. Song, F. Liu, J. Hu, "Graph convolutional neural
networks with global attention for improved materials property prediction", Phys. Chem. Chem.
Phys. 22, 18141 (2020). A baseline of Crystal Twins (Magar et al., npj Comput. Mater. 2022).

What we followed: the authors' code (github.com/superlouis/GATGNN, ``gatgnn/model.py``,
``train.py``, ``gatgnn/data.py``) with its defaults: 3 AGAT layers (``GAT_Crystal``), 64
neurons, 4 heads averaged (``concat=False``), the composition global attention (GI-M1,
``COMPOSITION_Attention``), the two hidden layers after pooling (``xtra_layers=True``), no
composition concatenation. In detail:

* ``x = Linear(92, 64)(element features)``; ``e = leaky_relu(Linear(41, 64)(gaussian), 0.2)``.
* AGAT layer, per edge ``(i, j)`` (``flow='target_to_source'``: ``i`` the centre, aggregated
  onto): ``x̃_i = softplus([x_i ‖ e_ij] W)``, ``x̃_j = softplus([x_j ‖ e_ij] W)`` viewed as
  ``(heads, F)``; ``α = softplus(Σ_f [x̃_i ‖ x̃_j] · a)`` per head, ``α = softplus(BN_heads(α))``,
  softmax over each centre's edges; ``out_i = mean_heads(Σ_j α_ij x̃_j) + bias``; then
  ``BatchNorm(64)`` and softplus.
* Global attention: ``w = softmax_crystal(Linear(32, 1)(softplus(Linear(64 + 103, 32)(x_i ‖
  c))))`` with ``c`` the crystal's composition (fraction of each of the 103 elements H..Lr);
  ``y = Σ_i w_i x_i``; then ``softplus(linear1)``, ``softplus(linear2)`` (64 → 64).
* The output layer ``out`` is the property head here (:class:`~crystaltwins.models.PropertyHead`
  or the projector), so the encoder's embedding is ``y`` after ``linear2``, ``H = 64``.

What we map to our graph: their graph is CGCNN's, 12 nearest neighbours within 8 Å, Gaussian
distances on ``arange(0, 8.2, 0.2)`` (41 features): the same as ours. Atoms with fewer than 12
neighbours get, in their code, padding edges to atom 0 at distance 9 Å; ours have only their
real edges. The composition uses the atomic numbers of the batch: a masked atom (Z = 0)
counts in the crystal's atom total but as no element. Their ``W``/``att`` use glorot and a
zero bias (as here). Cluster attention (GI-M2..M4, spectral clustering of positions) is not
implemented (not their default).

Computation: ``[x ‖ e] W = x W_x + e W_e``: the atom part is computed per atom and gathered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.layers.gaussian import GaussianExpansion
from crystaltwins.layers.graph_ops import (
    crystal_readout,
    element_table,
    gaussian_settings,
    segment_softmax,
    segment_sum,
)
from crystaltwins.models.encoder_base import Encoder

#: Elements of the composition vector (H..Lr, as GATGNN's ``ELEM_Encoder``).
N_COMPOSITION_ELEMENTS = 103
#: Negative slope of the edge embedding's leaky ReLU (GATGNN's ``neg_slope``).
EDGE_NEGATIVE_SLOPE = 0.2
#: Hidden width of the composition attention (GATGNN's ``node_layer1``).
ATTENTION_HIDDEN = 32


class AugmentedGraphAttention(nn.Module):
    """GATGNN's AGAT layer (``GAT_Crystal``) on an edge list.

    :param in_features: width of the atom features.
    :param out_features: ``F``, width per head of the output.
    :param edge_dim: width of the edge embedding.
    :param heads: number of attention heads (averaged).
    """

    def __init__(self, in_features: int, out_features: int, edge_dim: int, heads: int) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.heads = int(heads)
        self.W = nn.Parameter(torch.empty(in_features + edge_dim, heads * out_features))
        self.att = nn.Parameter(torch.empty(1, heads, 2 * out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.bn1 = nn.BatchNorm1d(heads)
        nn.init.xavier_uniform_(self.W)  # torch_geometric's glorot
        nn.init.xavier_uniform_(self.att)

    def forward(self, x: Tensor, edge_embedding: Tensor, edge_index: Tensor) -> Tensor:
        """:param x: ``(N, in)``; :param edge_embedding: ``(E, edge_dim)``;
        :param edge_index: ``(2, E)`` (row 0 the centre). :returns: ``(N, F)``."""
        centre, neighbour = edge_index
        n, h, f = x.shape[0], self.heads, self.out_features
        w_x, w_e = self.W[: self.in_features], self.W[self.in_features :]
        atom_part = x @ w_x  # (N, h F)
        edge_part = edge_embedding @ w_e  # (E, h F)
        x_i = F.softplus(atom_part.index_select(0, centre) + edge_part).view(-1, h, f)
        x_j = F.softplus(atom_part.index_select(0, neighbour) + edge_part).view(-1, h, f)
        score = (x_i * self.att[..., :f]).sum(-1) + (x_j * self.att[..., f:]).sum(-1)
        alpha = F.softplus(self.bn1(F.softplus(score)))  # (E, h)
        alpha = segment_softmax(alpha, centre, n)
        summed = segment_sum(x_j * alpha.unsqueeze(-1), centre, n)  # (N, h, F)
        return summed.mean(dim=1) + self.bias


class GATGNNEncoder(Encoder):
    """GATGNN up to the crystal embedding: ``batch → (B, neurons)``.

    :param atom_features: ``(n_z, n_features)`` element table, row 0 (masked atom) zeros.
    :param neurons: width of atom, edge and crystal features (GATGNN: 64).
    :param n_layers: number of AGAT layers (GATGNN: 3).
    :param heads: attention heads per layer (GATGNN: 4).
    :param hidden_layers: the two ``softplus(Linear)`` layers after pooling (GATGNN: on).
    :param gaussian: :class:`~crystaltwins.layers.GaussianExpansion` arguments (CGCNN's).
    """

    #: Raised when the init args or weight names change (model files of a newer one are refused).
    version = 1
    atom_features: Tensor

    def __init__(
        self,
        atom_features: Tensor,
        neurons: int = 64,
        n_layers: int = 3,
        heads: int = 4,
        hidden_layers: bool = True,
        gaussian: Mapping[str, float | None] | None = None,
    ) -> None:
        super().__init__()
        table = element_table(atom_features)
        if n_layers < 0 or heads < 1:
            raise ValueError(f"need n_layers >= 0 and heads >= 1, got {n_layers}, {heads}")
        self.config: dict[str, Any] = {
            "neurons": int(neurons),
            "n_layers": int(n_layers),
            "heads": int(heads),
            "hidden_layers": bool(hidden_layers),
            "gaussian": gaussian_settings(gaussian),
        }
        self.register_buffer("atom_features", table, persistent=False)
        self.gaussian = GaussianExpansion(**self.config["gaussian"])
        n_h = int(neurons)
        self.embed_n = nn.Linear(table.shape[1], n_h)
        self.embed_e = nn.Linear(self.gaussian.num_features, n_h)
        self.node_att = nn.ModuleList(
            AugmentedGraphAttention(n_h, n_h, n_h, heads) for _ in range(n_layers)
        )
        self.batch_norm = nn.ModuleList(nn.BatchNorm1d(n_h) for _ in range(n_layers))
        self.comp_node_layer = nn.Linear(n_h + N_COMPOSITION_ELEMENTS, ATTENTION_HIDDEN)
        self.comp_atten_layer = nn.Linear(ATTENTION_HIDDEN, 1)
        if hidden_layers:
            self.linear1 = nn.Linear(n_h, n_h)
            self.linear2 = nn.Linear(n_h, n_h)

    @property
    def out_dim(self) -> int:
        """Width ``H`` of the crystal embedding."""
        return self.config["neurons"]

    def atom_embeddings(self, batch: CrystalGraphBatch) -> Tensor:
        """Atom features after the last AGAT layer, ``(n_atoms, neurons)``."""
        x = self.embed_n(self.atom_features).index_select(0, batch.atomic_numbers)
        if not self.node_att:
            return x
        # at least float32: under autocast x is half precision, whose 0.03 Å steps near 8 Å
        # (bfloat16) are as large as the perturbation of a view
        distance = batch.edge_distance.to(torch.promote_types(x.dtype, torch.float32))
        edge = F.leaky_relu(self.embed_e(self.gaussian(distance).to(x.dtype)), EDGE_NEGATIVE_SLOPE)
        for attention, norm in zip(self.node_att, self.batch_norm, strict=True):
            x = F.softplus(norm(attention(x, edge, batch.edge_index)))
        return x

    @staticmethod
    def composition(batch: CrystalGraphBatch, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, 103)`` fraction of each element H..Lr among each crystal's atoms, in ``dtype``
        (float32 at least: the model's dtype in float64)."""
        z = batch.atomic_numbers
        known = (z >= 1) & (z <= N_COMPOSITION_ELEMENTS)
        one_hot = F.one_hot((z - 1).clamp(0, N_COMPOSITION_ELEMENTS - 1), N_COMPOSITION_ELEMENTS)
        one_hot = one_hot.to(dtype) * known.unsqueeze(1)
        return crystal_readout(one_hot, batch.crystal_index, batch.num_crystals, "mean")

    def forward(self, batch: CrystalGraphBatch) -> Tensor:
        """Crystal embeddings ``(num_crystals, neurons)``."""
        x = self.atom_embeddings(batch)
        composition = self.composition(batch, torch.promote_types(x.dtype, torch.float32))
        composition = composition.to(x.dtype)
        per_atom = torch.cat((x, composition.index_select(0, batch.crystal_index)), dim=1)
        score = self.comp_atten_layer(F.softplus(self.comp_node_layer(per_atom)))  # (N, 1)
        weights = segment_softmax(score, batch.crystal_index, batch.num_crystals)
        y = segment_sum(x * weights, batch.crystal_index, batch.num_crystals)
        if self.config["hidden_layers"]:
            y = F.softplus(self.linear2(F.softplus(self.linear1(y))))
        return y
