"""Objectives summed with weights: parsing, one encoder pass for crystal and atom objectives,
and ``pretrain --objective barlow_twins+denoise`` from the CLI to a model ``finetune`` takes."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
import torch

from crystaltwins.cli.main import main
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.batch import GraphArrays
from crystaltwins.graph.crystal_graph import build_crystal_graph
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.losses import BarlowTwinsLoss
from crystaltwins.models.checkpoint import load_model
from crystaltwins.models.heads import ProjectionHead
from crystaltwins.training.common import new_encoder
from crystaltwins.training.objectives import (
    build_objectives,
    check_augmentations,
    crystal_and_atom_embeddings,
    make_heads,
    objective_losses,
    parse_objectives,
    weighted_sum,
)
from crystaltwins.training.pretrain import PretrainModule
from crystaltwins.transforms import build_augmentation
from tests.helpers import read_structures


def test_parse_objectives_and_weights():
    assert parse_objectives("barlow_twins") == [("barlow_twins", 1.0)]
    spec = "barlow_twins+masked-element+denoise"
    expected = [("barlow_twins", 1.0), ("masked_element", 0.5), ("denoise", 2.0)]
    assert parse_objectives(spec, "1,0.5,2") == expected
    assert parse_objectives(spec, "denoise:2, Masked_Element:0.5") == expected
    for weights, message in [
        ("1,2", "2 objective weights"),
        ("1,x,1", "'x' of masked_element is not a number"),
        ("1,0,1", "must be positive"),
        ("denoise:1,2", "not both"),
        ("vicreg:1", "which --objective lacks"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_objectives(spec, weights)
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        parse_objectives("barlow_twins+nope")
    with pytest.raises(ValueError, match="more than once"):
        parse_objectives("denoise+denoise")


def test_atom_objectives_check_the_augmentations():
    check_augmentations("barlow_twins+masked_element+denoise", ["gn", "am", "em"])
    check_augmentations("denoise", ["rp"])
    with pytest.raises(ValueError, match="masked_element needs am in --augment"):
        check_augmentations("barlow_twins+masked_element", ["rp", "em"])
    with pytest.raises(ValueError, match="denoise needs gn or rp"):
        check_augmentations("denoise", ["am", "em"])


@pytest.fixture(scope="module")
def views(data_dir):
    settings = GraphSettings(perturbation_margin=0.3)
    graphs = [
        build_crystal_graph(s, settings, id=i)
        for i, s in read_structures(data_dir / "perovskites.csv.gz", 8)
    ]
    arrays = GraphArrays.from_graphs(graphs)
    augmentation = build_augmentation("gn,am,em", settings, options={"gn": {"sigma": 0.1}})
    rng = np.random.default_rng(0)
    return [augmentation.batch(arrays, rng).to_batch() for _ in range(2)]


def test_one_encoder_pass_gives_crystal_and_atom_embeddings(views):
    torch.manual_seed(0)
    encoder = new_encoder(AtomFeaturizer.builtin(), GraphSettings(), 16, 2, 24).eval()
    calls = []
    original = type(encoder).atom_embeddings

    def counted(self, batch):
        calls.append(1)
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(encoder), "atom_embeddings", counted)
        crystal, atoms = crystal_and_atom_embeddings(encoder, views[0])
        assert len(calls) == 1
    torch.testing.assert_close(crystal, encoder(views[0]))
    torch.testing.assert_close(atoms, encoder.atom_embeddings(views[0]))
    assert "atom_embeddings" not in vars(encoder)  # the method is back


def test_weighted_losses_of_the_pretraining_module(views):
    torch.manual_seed(0)
    featurizer = AtomFeaturizer.builtin()
    encoder = new_encoder(featurizer, GraphSettings(), 16, 2, 24)
    projector = ProjectionHead(24, 16, 8)
    terms = build_objectives("barlow_twins+masked_element+denoise", "0.5,2,3")
    heads = make_heads(terms, 16, len(featurizer.table), 8.0)
    module = PretrainModule(encoder, projector, terms, pretext_heads=heads)
    assert set(module.pretext_heads) == {"masked_element", "denoise"}
    assert not list(module.objectives.parameters())
    losses = objective_losses(terms, views, encoder, projector, None, module.pretext_heads)
    assert set(losses) == {"barlow_twins", "masked_element", "denoise"}
    alone = BarlowTwinsLoss()(projector(encoder(views[0])), projector(encoder(views[1])))
    torch.testing.assert_close(losses["barlow_twins"], alone)
    total = weighted_sum(terms, losses)
    parts = 0.5 * losses["barlow_twins"] + 2 * losses["masked_element"] + 3 * losses["denoise"]
    torch.testing.assert_close(total, parts)
    total.backward()  # every head and the encoder get gradients
    for name, p in module.named_parameters():
        assert p.grad is not None, name
    with pytest.raises(ValueError, match="needs its head"):
        PretrainModule(encoder, projector, terms)


def _small_csv(perovskite_subset, path, n=60):
    csv.field_size_limit(2**31 - 1)
    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        rows = list(csv.reader(handle))[: n + 1]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_pretrain_barlow_twins_plus_denoise_from_the_cli(perovskite_subset, cache_root, tmp_path):
    data = str(_small_csv(perovskite_subset, tmp_path / "small.csv"))
    run = tmp_path / "pre"
    common = ["--cache-root", str(cache_root), "--no-progress", "--epochs", "1"]
    args = ["pretrain", data, "--out", str(run), "--objective", "barlow_twins+denoise"]
    args += ["--objective-weights", "denoise:0.5", "--augment", "gn,am,em", "--noise-sigma", "0.1"]
    assert main([*args, "--batch-size", "16", "--val-fraction", "0.1", *common]) == 0
    rows = list(csv.DictReader((run / "history.csv").open()))
    for name in ("train_loss", "train_loss_barlow_twins", "train_loss_denoise", "val_loss_denoise"):
        assert np.isfinite(float(rows[-1][name])), name
    bundle = load_model(run / "model.pt")
    assert bundle.info["objective_weights"] == {"barlow_twins": 1.0, "denoise": 0.5}
    assert bundle.graph_settings.perturbation_margin == pytest.approx(0.3)  # 3σ of the noise
    payload = torch.load(run / "model.pt", weights_only=True)
    assert set(payload["heads"]) == {"projection"}  # the pretext heads stay out of the file
    out = tmp_path / "fine"
    fine = ["finetune", data, "--target", "e_form", "--out", str(out), "--pretrained", str(run)]
    assert main([*fine, "--batch-size", "16", *common]) == 0
    assert json.loads((out / "metrics.json").read_text())
