"""The crystal encoders by name (``--encoder NAME``).

Every class here has the encoder interface of :class:`~crystaltwins.models.CGCNNEncoder`:
``cls(atom_features, **config)``, ``config``, ``from_config(config, atom_features,
state_dict=None)``, ``out_dim``, ``forward(batch) -> (B, H)``, ``atom_embeddings(batch)``.
"""

from __future__ import annotations

from torch import nn

from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.gatgnn import GATGNNEncoder
from crystaltwins.models.gin import GINEncoder
from crystaltwins.models.ogcnn import OGCNNEncoder

#: Encoder name → class.
ENCODERS: dict[str, type[nn.Module]] = {
    "cgcnn": CGCNNEncoder,
    "gin": GINEncoder,
    "gatgnn": GATGNNEncoder,
    "ogcnn": OGCNNEncoder,
}
