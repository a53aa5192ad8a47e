"""Masked-element prediction and distance denoising on views of real crystals: their targets,
their losses against the formulas, and that they can be learned."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.batch import GraphArrays
from crystaltwins.graph.crystal_graph import build_crystal_graph
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.losses import (
    OBJECTIVES,
    DistanceDenoisingLoss,
    MaskedElementLoss,
    build_objective,
)
from crystaltwins.losses.denoising import denoising_targets
from crystaltwins.losses.masked_element import masked_element_targets
from crystaltwins.training.common import new_encoder
from crystaltwins.transforms import GaussianNoise, build_augmentation
from tests.helpers import read_structures

SIGMA = 0.1
SETTINGS = GraphSettings(perturbation_margin=3 * SIGMA)


@pytest.fixture(scope="module")
def crystals(data_dir):
    structures = read_structures(data_dir / "perovskites.csv.gz", 16)
    return [(s, build_crystal_graph(s, SETTINGS, id=i)) for i, s in structures]


def _view(crystals, names, seed=0):
    arrays = GraphArrays.from_graphs([g for _, g in crystals])
    augmentation = build_augmentation(names, SETTINGS, options={"gn": {"sigma": SIGMA}})
    return arrays, augmentation.batch(arrays, np.random.default_rng(seed))


def _learns(objective, crystals, names, steps=25):
    """The loss of the first and of the last of ``steps`` Adam steps on fresh views."""
    torch.manual_seed(0)
    featurizer = AtomFeaturizer.builtin()
    encoder = new_encoder(featurizer, SETTINGS, atom_fea_len=32, n_conv=2, h_fea_len=32)
    head = objective.make_head(32, len(featurizer.table), SETTINGS.radius)
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for step in range(steps):
        view = _view(crystals, names, seed=step % 5)[1].to_batch()
        loss = objective(encoder.atom_embeddings(view), view, head)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


# ------------------------------------------------------------------------- masked elements
def test_masked_element_targets_are_the_true_elements_of_the_masked_atoms(crystals):
    arrays, view = _view(crystals, "rp,am,em")
    batch = view.to_batch()
    masked, elements = masked_element_targets(batch)
    true_z = np.concatenate([s.atomic_numbers for s, _ in crystals])
    np.testing.assert_array_equal(elements.numpy(), true_z)
    assert bool((batch.atomic_numbers[masked] == 0).all())
    np.testing.assert_array_equal(batch.atomic_numbers[~masked].numpy(), true_z[~masked.numpy()])
    per_crystal = np.bincount(arrays.atom_crystal[masked.numpy()], minlength=len(crystals))
    sizes = [len(s) for s, _ in crystals]
    assert per_crystal.tolist() == [max(1, math.floor(0.1 * n)) for n in sizes]
    # masking twice keeps the first true elements
    twice = build_augmentation("am").batch(view, np.random.default_rng(1)).to_batch()
    np.testing.assert_array_equal(twice.original_atomic_numbers.numpy(), true_z)


def test_masked_element_loss_is_the_cross_entropy_over_the_masked_atoms(crystals):
    batch = _view(crystals, "am")[1].to_batch()
    objective = MaskedElementLoss()
    head = objective.make_head(8, 101, 8.0).double()
    h = torch.randn(batch.num_atoms, 8, dtype=torch.float64)
    logits = head(h)
    masked = [i for i in range(batch.num_atoms) if int(batch.atomic_numbers[i]) == 0]
    expected = 0.0
    for i in masked:
        z = int(batch.original_atomic_numbers[i])
        expected -= float((logits[i, z] - torch.logsumexp(logits[i], 0)).detach()) / len(masked)
    with torch.no_grad():
        assert abs(float(objective(h, batch, head)) - expected) < 1e-5


def test_masked_element_needs_masked_views(crystals):
    batch = _view(crystals, "rp,em")[1].to_batch()
    objective = build_objective("masked-element")
    assert OBJECTIVES["masked_element"] is MaskedElementLoss and not list(objective.parameters())
    with pytest.raises(ValueError, match="add am to --augment"):
        objective(torch.zeros(batch.num_atoms, 4), batch, torch.nn.Identity())


def test_masked_element_loss_decreases(crystals):
    losses = _learns(MaskedElementLoss(), crystals, "am")
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


# ------------------------------------------------------------------------------- denoising
def test_gaussian_noise_moves():
    noise = GaussianNoise(SIGMA, settings=SETTINGS)
    moves = noise.displacements(20_000, np.random.default_rng(0))
    length = np.linalg.norm(moves, axis=1)
    assert abs(moves.std() - SIGMA) < 0.03 * SIGMA and abs(moves.mean()) < 0.003
    assert length.max() <= 3 * SIGMA + 1e-12 and (length > 2.5 * SIGMA).any()
    with pytest.raises(ValueError, match="perturbation_margin"):
        GaussianNoise(0.2, settings=SETTINGS)


def test_denoising_targets_are_the_clean_lengths_of_the_kept_edges(crystals):
    arrays, view = _view(crystals, "gn,am,em")
    batch = view.to_batch()
    clean = denoising_targets(batch).double().numpy()
    # every kept edge, from pymatgen's Cartesian positions of the unmoved structure
    positions = np.concatenate([s.cart_coords for s, _ in crystals])
    vectors = positions[view.edge_dst] + view.edge_shift - positions[view.edge_src]
    np.testing.assert_allclose(clean, np.linalg.norm(vectors, axis=1), rtol=0, atol=1e-5)
    # edges kept from the clean graph: the graph builder's own lengths
    before = {
        (int(i), int(j), tuple(np.round(s, 4))): d
        for i, j, s, d in zip(
            arrays.edge_src, arrays.edge_dst, arrays.edge_shift, arrays.edge_distance, strict=True
        )
    }
    keys = [
        (int(i), int(j), tuple(np.round(s, 4)))
        for i, j, s in zip(view.edge_src, view.edge_dst, view.edge_shift, strict=True)
    ]
    common = [k for k, key in enumerate(keys) if key in before]
    assert len(common) > 0.5 * len(keys)
    np.testing.assert_allclose(clean[common], [before[keys[k]] for k in common], atol=1e-5)
    change = clean - batch.edge_distance.double().numpy()
    assert np.abs(change).max() <= 2 * 3 * SIGMA + 1e-5 and np.abs(change).mean() > 0.01
    # views whose atoms did not move carry no clean lengths
    assert _view(crystals, "am,em")[1].to_batch().clean_edge_distance is None


def test_denoising_loss_is_the_mse_of_the_standardised_change(crystals):
    batch = _view(crystals, "gn")[1].to_batch()
    objective = DistanceDenoisingLoss()
    head = objective.make_head(8, 101, 8.0)
    h = torch.randn(batch.num_atoms, 8)
    predicted = head(h, batch.edge_index, batch.edge_distance).detach().double()
    change = (batch.clean_edge_distance - batch.edge_distance).double()
    target = (change - change.mean()) / torch.sqrt(change.var(correction=0) + 1e-8)
    expected = sum(float(p - t) ** 2 for p, t in zip(predicted, target, strict=True))
    assert abs(objective(h, batch, head).item() - expected / batch.num_edges) < 1e-4
    assert abs(float(objective(h, batch, lambda *_: torch.zeros(batch.num_edges))) - 1) < 1e-4
    with pytest.raises(ValueError, match="add gn"):
        objective(h, _view(crystals, "am")[1].to_batch(), head)


def test_denoising_loss_decreases(crystals):
    losses = _learns(DistanceDenoisingLoss(), crystals, "gn", steps=50)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses  # 1: predicting nothing
