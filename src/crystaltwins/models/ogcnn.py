"""OGCNN encoder: CGCNN convolutions on element + orbital-field-matrix atom features.

M. Karamad, R. Magar, Y. Shi, S. Siahrostami, I. D. Gates, A. Barati Farimani, "Orbital graph
convolutional neural network for material property prediction", Phys. Rev. Materials 4,
093801 (2020). A baseline of Crystal Twins (Magar et al., npj Comput. Mater. 2022). OFM: Pham
et al., Sci. Technol. Adv. Mater. 18, 756 (2017) (see :mod:`crystaltwins.graph.ofm`).

What we followed: the authors' code as shipped with Crystal Twins (``OGCNN_CT/ogcnn/model.py``,
``data.py``, ``main.py`` of github.com/RishikeshMagar/Crystal-Twins):

* Atom input ``[element features (92) ‖ OFM (32 × 33 = 1056)]`` → ``embedding1`` (→ ``hot_fea_len``)
  → softplus → ``embedding2`` (→ ``atom_fea_len``) → ``n_conv`` CGCNN convolutions (their
  ``ConvLayer`` is CGCNN's; ours is :class:`~crystaltwins.layers.CGConv`) → mean over atoms →
  softplus → ``conv_to_fc`` → softplus, as :class:`~crystaltwins.models.CGCNNEncoder`.
* The OFM of atom *p* (``make_hot_for_atom_i``): ``[o_p ‖ Σ_k w_pk o_p ⊗ o_k]``, a ``32 × 33``
  matrix flattened row by row, ``o`` the valence one-hot vectors, the weight
  ``w_pk = (θ_k / θ_max) / r_pk⁴`` (their ``r_pk`` is already the squared distance, then squared
  again: ``1 / d⁴``, not the ``1 / d`` of Pham et al.).

What differs, and why:

* Neighbours: theirs are the Voronoi neighbours (pymatgen ``VoronoiNN``, seconds per crystal)
  with the solid-angle factor ``θ_k / θ_max``. Ours are the crystal graph's edges (12 nearest
  within 8 Å, the same neighbour lists as the convolutions) with ``θ_k / θ_max = 1``, so the OFM
  is ``[o_p ‖ o_p ⊗ Σ_k d_pk⁻⁴ o_k]``; the ``d⁻⁴`` weight already makes far neighbours count little.
* Where: the OFM is computed per batch, vectorised in torch from ``atomic_numbers``, the edge
  list and the distances (a gather and an ``index_add_`` of ``(E, 32)``, an outer product of
  ``(N, 32 × 33)``), not stored in the graph cache. It then follows the augmentations of
  pre-training, as every other input does: a masked atom (Z = 0) has a zero ``o`` (its own OFM
  and its share of its neighbours' OFM vanish: a cached OFM would leak the masked element), and
  perturbed positions change the distances. It costs a few per cent of a training step
  (``benchmarks/bench_encoders.py``).
* Widths: their ``main.py`` defaults are ``atom_fea_len=1536``, ``hot_fea_len=768``; the
  convolutions cost ∝ ``atom_fea_len²`` per edge, about 500x CGCNN's 64, which is out of reach
  on CPUs. Our defaults are CGCNN/Crystal Twins' ``atom_fea_len=64``, ``h_fea_len=128`` with
  ``hot_fea_len=128`` (so the comparison with CGCNN isolates the OFM input); the published
  widths are ``OGCNNEncoder(table, atom_fea_len=1536, hot_fea_len=768)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.graph.ofm import N_ORBITALS, valence_table
from crystaltwins.layers import cgcnn_conv
from crystaltwins.layers.cgcnn_conv import CGConv, EdgeGraph
from crystaltwins.layers.gaussian import GaussianExpansion
from crystaltwins.layers.graph_ops import (
    crystal_readout,
    element_table,
    gaussian_settings,
    segment_sum,
)
from crystaltwins.models.encoder_base import Encoder

#: Width of the flattened OFM, ``32 × (1 + 32)``.
OFM_FEATURES = N_ORBITALS * (N_ORBITALS + 1)
#: Power of the inverse distance in the OFM weight (OGCNN code: ``1 / (d²)²``).
OFM_DISTANCE_POWER = 4


def orbital_field_matrix(
    atomic_numbers: Tensor, edge_index: Tensor, edge_distance: Tensor, valence: Tensor
) -> Tensor:
    """OFM atom features of a batch, ``[o_p ‖ o_p ⊗ Σ_k d_pk⁻⁴ o_k]`` flattened row by row.

    :param atomic_numbers: ``(N,)`` int64 Z, 0 for a masked atom.
    :param edge_index: ``(2, E)``, row 0 the centre *p*, row 1 the neighbour *k*.
    :param edge_distance: ``(E,)`` distances in Å (positive).
    :param valence: ``(n_z, 32)`` valence one-hot table (:func:`~crystaltwins.graph.ofm.valence_table`).
    :returns: ``(N, 1056)``; column ``33 a + 0`` is ``o_p[a]``, ``33 a + 1 + b`` is
        ``o_p[a] Σ_k d⁻⁴ o_k[b]`` (the OGCNN code's ``(32, 33)`` matrix, ``reshape(-1)``).
    """
    orbitals = valence.index_select(0, atomic_numbers)  # (N, 32)
    centre, neighbour = edge_index
    weight = edge_distance.to(orbitals.dtype).pow(-OFM_DISTANCE_POWER).unsqueeze(1)
    field = segment_sum(orbitals.index_select(0, neighbour) * weight, centre, orbitals.shape[0])
    right = torch.cat((torch.ones_like(field[:, :1]), field), dim=1)  # (N, 33)
    return (orbitals.unsqueeze(2) * right.unsqueeze(1)).reshape(orbitals.shape[0], -1)


class OGCNNEncoder(Encoder):
    """OGCNN up to the crystal embedding: ``batch → (B, h_fea_len)``.

    :param atom_features: ``(n_z, n_features)`` element table, row 0 (masked atom) zeros.
    :param atom_fea_len: ``A``, width in the convolutions (OGCNN code: 1536; here 64).
    :param hot_fea_len: width between ``embedding1`` and ``embedding2`` (OGCNN code: 768).
    :param n_conv: number of CGCNN convolutions (3).
    :param h_fea_len: ``H``, width of the crystal embedding (128).
    :param gaussian: :class:`~crystaltwins.layers.GaussianExpansion` arguments (CGCNN's).
    """

    #: Raised when the init args or weight names change (model files of a newer one are refused).
    version = 1
    atom_features: Tensor
    valence: Tensor

    def __init__(
        self,
        atom_features: Tensor,
        atom_fea_len: int = 64,
        hot_fea_len: int = 128,
        n_conv: int = 3,
        h_fea_len: int = 128,
        gaussian: Mapping[str, float | None] | None = None,
    ) -> None:
        super().__init__()
        table = element_table(atom_features)
        if n_conv < 0:
            raise ValueError(f"n_conv must be >= 0, got {n_conv}")
        self.config: dict[str, Any] = {
            "atom_fea_len": int(atom_fea_len),
            "hot_fea_len": int(hot_fea_len),
            "n_conv": int(n_conv),
            "h_fea_len": int(h_fea_len),
            "gaussian": gaussian_settings(gaussian),
        }
        self.register_buffer("atom_features", table, persistent=False)
        valence = torch.from_numpy(valence_table(max(table.shape[0], 119)))
        self.register_buffer("valence", valence, persistent=False)
        self.gaussian = GaussianExpansion(**self.config["gaussian"])
        self.embedding1 = nn.Linear(table.shape[1] + OFM_FEATURES, int(hot_fea_len))
        self.embedding2 = nn.Linear(int(hot_fea_len), int(atom_fea_len))
        self.convs = nn.ModuleList(
            CGConv(atom_fea_len, self.gaussian.num_features) for _ in range(n_conv)
        )
        self.conv_to_fc = nn.Linear(int(atom_fea_len), int(h_fea_len))

    @property
    def out_dim(self) -> int:
        """Width ``H`` of the crystal embedding."""
        return self.config["h_fea_len"]

    def ofm(self, batch: CrystalGraphBatch) -> Tensor:
        """The batch's OFM atom features, ``(n_atoms, 1056)`` (:func:`orbital_field_matrix`)."""
        return orbital_field_matrix(
            batch.atomic_numbers, batch.edge_index, batch.edge_distance, self.valence
        )

    def atom_embeddings(self, batch: CrystalGraphBatch) -> Tensor:
        """Atom features after the last convolution, ``(n_atoms, atom_fea_len)``."""
        with torch.autocast(device_type=batch.atomic_numbers.device.type, enabled=False):
            return self._atom_embeddings_fp32(batch)

    def _atom_embeddings_fp32(self, batch: CrystalGraphBatch) -> Tensor:
        n_elem = self.num_features
        w = self.embedding1.weight  # [element part | OFM part]
        # embedding1([table[Z] ‖ ofm]) = (table W_e^T)[Z] + ofm W_o^T + b
        element_part = F.linear(self.atom_features, w[:, :n_elem], self.embedding1.bias)
        hidden = torch.addmm(
            element_part.index_select(0, batch.atomic_numbers), self.ofm(batch), w[:, n_elem:].t()
        )
        x = self.embedding2(F.softplus(hidden))
        if len(self.convs) == 0:
            return x
        distance = batch.edge_distance.to(x.dtype)
        if cgcnn_conv.plain_path(x):
            edge_fea = self.gaussian(distance)
            for conv in self.convs:
                x = conv(x, edge_fea, batch.edge_index)
            return x
        band = self.gaussian.banded(distance)
        edge_fea = torch.zeros(
            distance.shape[0], self.gaussian.num_features, dtype=x.dtype, device=x.device
        ).scatter_(1, *band)
        graph = EdgeGraph(edge_fea, batch.edge_index, x.shape[0], edge_band=band)
        for conv in self.convs:
            x = conv(x, edge_fea, batch.edge_index, graph)
        return x

    def forward(self, batch: CrystalGraphBatch) -> Tensor:
        """Crystal embeddings ``(num_crystals, h_fea_len)``."""
        crystal = crystal_readout(
            self.atom_embeddings(batch), batch.crystal_index, batch.num_crystals, "mean"
        )
        return F.softplus(self.conv_to_fc(F.softplus(crystal)))
