"""Checks every crystal encoder must pass (used by test_gin.py, test_gatgnn.py, test_ogcnn.py).

Each takes a factory ``make(table) -> encoder`` (a fresh, seeded encoder) and asserts the
encoder interface: shapes, batch independence in evaluation, gradients, save/reload, Barlow
Twins pre-training steps and (slow) training well below the mean predictor on real crystals.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.losses.barlow_twins import BarlowTwinsLoss
from crystaltwins.models import CrystalTwinsModel, ProjectionHead, PropertyHead, PropertyModel

Factory = Callable[[torch.Tensor], nn.Module]


def randomise_batch_norms(encoder: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics, so that evaluation-mode tests see real BatchNorms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))


def check_shapes(make: Factory, table, batch: CrystalGraphBatch) -> None:
    encoder = make(table)
    out = encoder(batch)
    assert out.shape == (batch.num_crystals, encoder.out_dim)
    assert encoder.atom_embeddings(batch).shape[0] == batch.num_atoms
    assert out.isfinite().all()


def check_batch_independent_in_eval(make: Factory, table, crystals, collate) -> None:
    encoder = make(table)
    randomise_batch_norms(encoder)
    encoder.eval()
    with torch.no_grad():
        together = encoder(collate(crystals))
        alone = torch.cat([encoder(collate([c])) for c in crystals])
        reversed_order = encoder(collate(crystals[::-1])).flip(0)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together, reversed_order, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(together[0], together[1])  # the crystals do differ


def check_gradients_flow(make: Factory, table, batch: CrystalGraphBatch) -> None:
    encoder = make(table)
    encoder.train()
    model = PropertyModel(encoder, PropertyHead(encoder.out_dim))
    model(batch).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
    # a bias right before a BatchNorm has an (almost) zero gradient; every weight has one
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            assert p.grad.abs().sum() > 0, name


def check_save_and_reload(make: Factory, table, batch: CrystalGraphBatch) -> None:
    encoder = make(table)
    randomise_batch_norms(encoder)
    config = json.loads(json.dumps(encoder.config))  # JSON-able, as in the model file
    buffer = io.BytesIO()
    torch.save(encoder.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    rebuilt = type(encoder).from_config(config, table, state)
    assert rebuilt.config == encoder.config
    encoder.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), encoder(batch), atol=0, rtol=0)
    fresh = make(table).eval()  # a different initialisation really differs
    with torch.no_grad():
        assert not torch.allclose(fresh(batch), encoder(batch))


def augmented_view(batch: CrystalGraphBatch, gen: torch.Generator) -> CrystalGraphBatch:
    """Atom masking (10 %, Z → 0) and a distance jitter (±0.05 Å), as CT's AM and RP do."""
    masked = torch.rand(batch.num_atoms, generator=gen) < 0.1
    jitter = 0.05 * (2 * torch.rand(batch.num_edges, generator=gen) - 1)
    return replace(
        batch,
        atomic_numbers=batch.atomic_numbers.masked_fill(masked, 0),
        edge_distance=(batch.edge_distance + jitter).clamp_min(0.5),
    )


def check_barlow_twins_steps(make: Factory, table, batch: CrystalGraphBatch) -> list[float]:
    """A few Barlow Twins steps on two augmented views: finite losses that decrease."""
    encoder = make(table)
    model = CrystalTwinsModel(encoder, ProjectionHead(encoder.out_dim, 64, 64))
    loss_fn = BarlowTwinsLoss(gather_distributed=False)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for _ in range(6):
        loss = loss_fn(model(augmented_view(batch, gen)), model(augmented_view(batch, gen)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    return losses


def perovskite_batches(perovskite_subset: Path, cache_dir: Path) -> tuple[Any, torch.Tensor]:
    """``(GraphStore, table)`` of the perovskite subset with formation energies as values."""
    from crystaltwins.data.cache import GraphCache, build_graph_cache
    from crystaltwins.data.gather import GraphStore
    from crystaltwins.graph.atom_features import AtomFeaturizer

    featurizer = AtomFeaturizer.builtin()
    build_graph_cache(
        perovskite_subset, cache_dir, featurizer=featurizer, targets=["e_form"], progress=False
    )
    cache = GraphCache(cache_dir)
    return GraphStore(cache, values=cache.labels(["e_form"])), torch.tensor(featurizer.table)


def check_trains_below_mean_predictor(
    make: Factory, store: Any, table: torch.Tensor, epochs: int = 25
) -> tuple[float, float]:
    """From scratch on 1,000 perovskites, the test MAE (300 others) is < 0.6x the mean's."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(store))
    train, test = order[:1000], order[1000:1300]
    y = torch.from_numpy(store.values[:, 0])
    mean, std = float(y[train].mean()), float(y[train].std())
    encoder = make(table)
    model = PropertyModel(encoder, PropertyHead(encoder.out_dim))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * 8)
    for _ in range(epochs):
        model.train()
        for chunk in np.array_split(rng.permutation(train), 8):
            batch = store.batch(chunk, with_ids=False)
            loss = nn.functional.l1_loss(model(batch)[:, 0], (batch.targets[:, 0] - mean) / std)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        batch = store.batch(test, with_ids=False)
        prediction = model(batch)[:, 0] * std + mean
    mae = float((prediction - batch.targets[:, 0]).abs().mean())
    baseline = float((batch.targets[:, 0] - mean).abs().mean())
    assert mae < 0.6 * baseline, (mae, baseline)
    return mae, baseline
