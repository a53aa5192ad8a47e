"""CGCNN encoder, heads, full models and the published Crystal Twins weights."""

from crystaltwins.models.cgcnn import CGCNNEncoder, CrystalTwinsModel, PropertyModel
from crystaltwins.models.heads import ProjectionHead, PropertyHead, SimSiamPredictor
from crystaltwins.models.published import (
    PUBLISHED_ATOM_INIT_FINGERPRINT,
    atom_features_fingerprint,
    check_atom_features,
    load_published_crystal_twins,
    read_atom_init_table,
)

__all__ = [
    "PUBLISHED_ATOM_INIT_FINGERPRINT",
    "CGCNNEncoder",
    "CrystalTwinsModel",
    "ProjectionHead",
    "PropertyHead",
    "PropertyModel",
    "SimSiamPredictor",
    "atom_features_fingerprint",
    "check_atom_features",
    "load_published_crystal_twins",
    "read_atom_init_table",
]
