"""GIN encoder: the encoder checks, the summed edge term against the published layer, readouts."""

from __future__ import annotations

import pytest
import torch

from crystaltwins.layers import cgcnn_conv
from crystaltwins.models.gin import GINEncoder
from tests.models import encoder_checks as checks


def make(table, **kw) -> GINEncoder:
    torch.manual_seed(0)
    return GINEncoder(table, **{"emb_dim": 32, "n_layers": 3, "feat_dim": 48, **kw})


def test_shapes(table, crystals_factory, collate_fn):
    checks.check_shapes(make, table, collate_fn(crystals_factory(5)))


def test_batch_independent_in_eval(table, crystals_factory, collate_fn):
    checks.check_batch_independent_in_eval(make, table, crystals_factory(6, seed=1), collate_fn)


def test_gradients_flow(table, crystals_factory, collate_fn):
    checks.check_gradients_flow(make, table, collate_fn(crystals_factory(8, seed=2)))


def test_save_and_reload(table, crystals_factory, collate_fn):
    checks.check_save_and_reload(make, table, collate_fn(crystals_factory(6, seed=3)))


def test_barlow_twins_steps(table, crystals_factory, collate_fn):
    checks.check_barlow_twins_steps(make, table, collate_fn(crystals_factory(16, seed=4)))


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_summed_edge_term_equals_the_published_layer(
    table, crystals_factory, collate_fn, monkeypatch, plain, training
):
    """atom_embeddings (edge term summed per atom, embedding_bag or index_add_ neighbour sums)
    equals GINEConv written edge by edge: outputs and gradients."""
    monkeypatch.setattr(cgcnn_conv, "plain_path", lambda x: plain)
    batch = collate_fn(crystals_factory(6, seed=5))
    encoder = make(table)
    checks.randomise_batch_norms(encoder)
    encoder.train(training)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    fast = encoder.atom_embeddings(batch)
    fast.square().sum().backward()
    fast_grads = [None if p.grad is None else p.grad.clone() for p in encoder.parameters()]
    encoder.load_state_dict(state)
    encoder.zero_grad()
    x = encoder.embedding(encoder.atom_features)[batch.atomic_numbers]
    edge_fea = encoder.gaussian(batch.edge_distance)
    for layer in range(len(encoder.mlps)):
        x = encoder.plain_layer(layer, x, edge_fea, batch.edge_index)
    x.square().sum().backward()
    torch.testing.assert_close(fast, x, atol=1e-5, rtol=1e-4)
    # float32, relative to the largest gradient (rounding differs between the formulations)
    scale = max(float(g.abs().max()) for g in fast_grads if g is not None)
    for p, g in zip(encoder.parameters(), fast_grads, strict=True):
        if g is None:  # feat_lin: after the atom embeddings
            assert p.grad is None
        else:
            torch.testing.assert_close(g, p.grad, atol=2e-5 * scale, rtol=1e-3)


def test_sum_readout_is_count_times_mean(table, crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(5, seed=6))
    mean_enc, sum_enc = make(table).eval(), make(table, readout="sum").eval()
    counts = torch.bincount(batch.crystal_index).float().unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(sum_enc(batch), counts * mean_enc(batch), atol=1e-5, rtol=1e-5)


def test_masked_atom_has_no_element_information(table, crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(1, seed=7))
    encoder = make(table).eval()
    other = batch.atomic_numbers.clone()
    other[0] = 0
    with torch.no_grad():
        a = encoder(batch)
        masked = encoder(checks.replace(batch, atomic_numbers=other))
    assert not torch.allclose(a, masked)


def test_bad_arguments(table):
    with pytest.raises(ValueError, match="readout"):
        GINEncoder(table, readout="max")
    with pytest.raises(ValueError, match="n_layers"):
        GINEncoder(table, n_layers=0)
    with pytest.raises(ValueError, match="gaussian"):
        GINEncoder(table, gaussian={"width": 1.0})


@pytest.mark.slow
def test_trains_below_mean_predictor(perovskite_subset, cache_root):
    store, table = checks.perovskite_batches(perovskite_subset, cache_root / "encoders_perov")
    checks.check_trains_below_mean_predictor(make, store, table)
