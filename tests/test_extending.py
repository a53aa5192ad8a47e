"""Extending crystaltwins: a toy encoder, a toy objective and a toy augmentation, each one class
and one registry line, pre-trained and fine-tuned from the command line (1 epoch, 60 crystals)."""

from __future__ import annotations

import csv
import gzip
import itertools
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from crystaltwins.cli.main import main
from crystaltwins.graph.batch import CrystalGraphBatch, GraphArrays
from crystaltwins.losses import OBJECTIVES
from crystaltwins.models.checkpoint import load_model
from crystaltwins.models.registry import ENCODERS
from crystaltwins.transforms import AUGMENTATIONS, apply_to_graph


class MeanElementEncoder(nn.Module):
    """Toy encoder: a linear map of the element features, averaged over each crystal."""

    def __init__(self, atom_features: torch.Tensor, h_fea_len: int = 8) -> None:
        super().__init__()
        table = torch.as_tensor(atom_features, dtype=torch.float32).clone()
        self.register_buffer("atom_features", table, persistent=False)
        self.linear = nn.Linear(table.shape[1], h_fea_len)
        self.config = {"h_fea_len": int(h_fea_len)}

    @classmethod
    def from_config(cls, config: Any, atom_features: torch.Tensor, state_dict: Any = None):
        encoder = cls(atom_features, **dict(config))
        if state_dict is not None:
            encoder.load_state_dict(state_dict, strict=True)
        return encoder

    @property
    def out_dim(self) -> int:
        return self.config["h_fea_len"]

    def forward(self, batch: CrystalGraphBatch) -> torch.Tensor:
        atoms = self.linear(self.atom_features.index_select(0, batch.atomic_numbers))
        summed = atoms.new_zeros(batch.num_crystals, atoms.shape[1])
        summed.index_add_(0, batch.crystal_index, atoms)
        counts = torch.bincount(batch.crystal_index, minlength=batch.num_crystals).clamp_min(1)
        return summed / counts.unsqueeze(1)


class AlignmentLoss(nn.Module):
    """Toy objective: mean squared distance between the two views' projections."""

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return (z_a - z_b).square().sum(dim=1).mean()


class JitterDistances:
    """Toy augmentation, written to the documented protocol only (a ``batch`` method): every
    edge length scaled by ``1 + scale · N(0, 1)``."""

    def __init__(self, scale: float = 0.01) -> None:
        self.scale = scale

    def batch(self, arrays: GraphArrays, rng: np.random.Generator) -> GraphArrays:
        noise = 1.0 + self.scale * rng.standard_normal(arrays.edge_distance.shape[0])
        return replace(arrays, edge_distance=arrays.edge_distance * noise)


@pytest.fixture
def toys(monkeypatch):
    """One registry line each."""
    monkeypatch.setitem(ENCODERS, "toy", MeanElementEncoder)
    monkeypatch.setitem(OBJECTIVES, "alignment", AlignmentLoss)
    monkeypatch.setitem(AUGMENTATIONS, "jitter", JitterDistances)


@pytest.fixture(scope="module")
def sixty(perovskite_subset, tmp_path_factory):
    """The first 60 perovskites."""
    path = tmp_path_factory.mktemp("data") / "perovskites_60.csv.gz"
    csv.field_size_limit(2**31 - 1)
    with (
        gzip.open(perovskite_subset, "rt", newline="") as src,
        gzip.open(path, "wt", newline="") as dst,
    ):
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), 61))
    return path


def _run(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_toy_encoder_objective_and_augmentation_from_the_cli(
    toys, sixty, cache_root, tmp_path, capsys
):
    common = ["--epochs", "1", "--cache-root", str(cache_root), "--no-progress"]
    common += ["--accelerator", "cpu"]
    pre = tmp_path / "pre"
    _run(
        ["pretrain", str(sixty), "--out", str(pre), "--encoder", "toy"]
        + ["--objective", "alignment", "--augment", "jitter,am", "--batch-size", "16"]
        + ["--val-fraction", "0.2", *common],
        capsys,
    )
    saved = torch.load(pre / "model.pt", weights_only=True)
    # no size asked for: the encoder keeps its own default
    assert saved["encoder"]["type"] == "toy" and saved["encoder"]["init_args"] == {"h_fea_len": 8}
    bundle = load_model(pre)
    assert isinstance(bundle.encoder, MeanElementEncoder)
    assert bundle.info["objective"] == "alignment" and bundle.info["augmentations"] == "jitter,am"
    assert bundle.head is not None and bundle.head.in_dim == 8 and bundle.predictor is None

    tuned = tmp_path / "tuned"
    _run(
        ["finetune", str(sixty), "--target", "e_form", "--pretrained", str(pre)]
        + ["--out", str(tuned), "--unit", "eV/atom", *common],
        capsys,
    )
    model = load_model(tuned).property_model()
    assert isinstance(model.encoder, MeanElementEncoder)
    assert (model.target.column, model.target.unit) == ("e_form", "eV/atom")
    out = tmp_path / "predictions.csv"
    _run(["predict", str(tuned), str(sixty), "--out", str(out)], capsys)
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and all(np.isfinite(float(r["prediction"])) for r in rows)

    scratch = tmp_path / "scratch"
    _run(
        ["finetune", str(sixty), "--target", "e_form", "--from-scratch", "--encoder", "toy"]
        + ["--out", str(scratch), *common],
        capsys,
    )
    assert torch.load(scratch / "model.pt", weights_only=True)["encoder"]["type"] == "toy"


def test_unknown_names_are_one_line_before_any_work(toys, sixty, tmp_path, capsys):
    for flag, name in (("--encoder", "nope"), ("--objective", "nope"), ("--augment", "rp,nope")):
        run = tmp_path / flag.strip("-")
        code = main(["pretrain", str(sixty), "--out", str(run), flag, name, "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "nope" in err and not run.exists()


def test_forged_width_of_a_registered_encoder_is_refused_before_allocating(
    toys, sixty, cache_root, tmp_path, capsys
):
    """An encoder without ``check_init_args`` is sized on the meta device: a file asking for a
    huge width over small weights is refused without allocating it."""
    from crystaltwins.graph.atom_features import default_featurizer
    from crystaltwins.graph.settings import GraphSettings
    from crystaltwins.models.checkpoint import ModelBundle, save_model
    from crystaltwins.models.heads import ProjectionHead

    featurizer = default_featurizer(None)
    encoder = MeanElementEncoder(torch.tensor(featurizer.table))
    bundle = ModelBundle(
        encoder, ProjectionHead(8, 8, 4), "pretrained", featurizer, GraphSettings(), {}
    )
    path = save_model(tmp_path / "model.pt", bundle)
    assert isinstance(load_model(path).encoder, MeanElementEncoder)
    payload = torch.load(path, weights_only=True)
    for width, words in (
        (10**9, "encoder.init_args.h_fea_len is 1000000000, at most 16384 expected"),  # 92 GB
        (12_000, "encoder.state['linear.weight'] has shape (8, 92)"),  # sized on the meta device
    ):
        payload["encoder"]["init_args"]["h_fea_len"] = width
        torch.save(payload, path)
        code = main(["embed", str(path), str(sixty), "--out", str(tmp_path / "e.npz")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert words in err, err


def test_a_protocol_transform_works_on_one_graph(sixty):
    from crystaltwins.graph.crystal_graph import build_crystal_graph
    from tests.helpers import read_structures

    (crystal_id, structure), *_ = read_structures(sixty, 1)
    graph = build_crystal_graph(structure, id=crystal_id)
    view = apply_to_graph(JitterDistances(0.1), graph, np.random.default_rng(0))
    assert view.edges.distance.shape == graph.edges.distance.shape
    assert not np.allclose(view.edges.distance, graph.edges.distance)
    np.testing.assert_array_equal(view.edges.image, graph.edges.image)
    np.testing.assert_array_equal(view.atomic_numbers, graph.atomic_numbers)
