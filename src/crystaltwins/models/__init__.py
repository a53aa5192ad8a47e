"""CGCNN encoder, heads, full models and the published Crystal Twins weights."""

from crystaltwins.models.cgcnn import CGCNNEncoder, CrystalTwinsModel
from crystaltwins.models.heads import ProjectionHead, PropertyHead, SimSiamPredictor
from crystaltwins.models.property_model import PropertyModel, Target
from crystaltwins.models.published import (
    PUBLISHED_ATOM_INIT_FINGERPRINT,
    atom_features_fingerprint,
    check_atom_features,
    load_published_crystal_twins,
    read_atom_init_table,
)
from crystaltwins.models.registry import (
    ENCODERS,
    HEADS,
    build_encoder,
    register_encoder,
    register_head,
)

__all__ = [
    "ENCODERS",
    "HEADS",
    "PUBLISHED_ATOM_INIT_FINGERPRINT",
    "CGCNNEncoder",
    "CrystalTwinsModel",
    "ProjectionHead",
    "PropertyHead",
    "PropertyModel",
    "SimSiamPredictor",
    "Target",
    "atom_features_fingerprint",
    "build_encoder",
    "check_atom_features",
    "load_published_crystal_twins",
    "read_atom_init_table",
    "register_encoder",
    "register_head",
]
