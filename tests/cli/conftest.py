"""Fixtures of the command-line tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.checkpoint import ModelBundle, save_model
from crystaltwins.models.heads import PropertyHead


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A small (untrained) fine-tuned model file on the built-in element features."""
    return make_tiny_model(tmp_path / "model.pt", "e_form")


def make_tiny_model(path: Path, target: str) -> Path:
    """A small (untrained) model predicting ``target`` at ``path``."""
    featurizer = AtomFeaturizer.builtin()
    torch.manual_seed(0)
    encoder = CGCNNEncoder(torch.tensor(featurizer.table), atom_fea_len=16, n_conv=1, h_fea_len=16)
    info = {"target_mean": 0.0, "target_std": 1.0, "task": "regression", "targets": [target]}
    bundle = ModelBundle(
        encoder, PropertyHead(16, 8, 1), "finetuned", featurizer, GraphSettings(), info
    )
    save_model(path, bundle)
    return path
