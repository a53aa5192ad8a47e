"""GATGNN encoder: the encoder checks, the AGAT layer against the published message function,
the composition attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crystaltwins.layers.graph_ops import segment_softmax
from crystaltwins.models.gatgnn import AugmentedGraphAttention, GATGNNEncoder
from tests.models import encoder_checks as checks


def make(table, **kw) -> GATGNNEncoder:
    torch.manual_seed(0)
    return GATGNNEncoder(table, **{"neurons": 24, "n_layers": 2, "heads": 3, **kw})


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


def published_message_passing(layer: AugmentedGraphAttention, x, edge, edge_index):
    """GAT_Crystal.message / update of github.com/superlouis/GATGNN, written per edge with
    Python loops for the softmax and the sum."""
    centre, neighbour = edge_index
    h, f = layer.heads, layer.out_features
    x_i = F.softplus(torch.cat([x[centre], edge], -1) @ layer.W).view(-1, h, f)
    x_j = F.softplus(torch.cat([x[neighbour], edge], -1) @ layer.W).view(-1, h, f)
    alpha = F.softplus((torch.cat([x_i, x_j], dim=-1) * layer.att).sum(dim=-1))
    alpha = F.softplus(layer.bn1(alpha))
    out = x.new_zeros(x.shape[0], h, f)
    for i in range(x.shape[0]):
        mine = centre == i
        if mine.any():
            weights = torch.softmax(alpha[mine], dim=0)
            out[i] = (x_j[mine] * weights.unsqueeze(-1)).sum(0)
    return out.mean(dim=1) + layer.bias


@pytest.mark.parametrize("training", [True, False])
def test_attention_layer_equals_the_published_one(table, crystals_factory, collate_fn, training):
    batch = collate_fn(crystals_factory(4, seed=5))
    torch.manual_seed(1)
    layer = AugmentedGraphAttention(8, 8, 5, heads=3)
    checks.randomise_batch_norms(layer)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    layer.train(training)
    x = torch.randn(batch.num_atoms, 8)
    edge = torch.randn(batch.num_edges, 5)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    ours = layer(x, edge, batch.edge_index)
    layer.load_state_dict(state)
    theirs = published_message_passing(layer, x, edge, batch.edge_index)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_segment_softmax_sums_to_one_per_group():
    scores = torch.tensor([[1.0, 800.0], [2.0, -800.0], [3.0, 0.0], [0.5, 0.5]])
    index = torch.tensor([0, 0, 2, 0])
    out = segment_softmax(scores, index, 3)
    torch.testing.assert_close(out[[0, 1, 3]], torch.softmax(scores[[0, 1, 3]], dim=0))
    torch.testing.assert_close(out[2], torch.ones(2))


def test_composition_fractions(table, collate_fn):
    z = torch.tensor([8, 8, 8, 22, 0, 38])
    crystal = (z, torch.tensor([[0, 1], [1, 0]]), torch.tensor([2.0, 2.0]))
    batch = collate_fn(
        [crystal, (torch.tensor([1]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0))]
    )
    comp = GATGNNEncoder.composition(batch)
    assert comp.shape == (2, 103)
    assert comp[0, 7] == pytest.approx(0.5) and comp[0, 21] == pytest.approx(1 / 6)
    assert comp[0].sum() == pytest.approx(5 / 6)  # the masked atom counts as no element
    assert comp[1, 0] == 1.0


def test_attention_pooling_is_a_weighted_sum(table, crystals_factory, collate_fn):
    """Without the hidden layers the embedding is Σ_i w_i x_i with weights summing to one per
    crystal: it lies within each crystal's range of atom features."""
    batch = collate_fn(crystals_factory(4, seed=6))
    encoder = make(table, hidden_layers=False).eval()
    with torch.no_grad():
        atoms, crystals = encoder.atom_embeddings(batch), encoder(batch)
    for k in range(4):
        mine = atoms[batch.crystal_index == k]
        assert (crystals[k] >= mine.min(0).values - 1e-5).all()
        assert (crystals[k] <= mine.max(0).values + 1e-5).all()


@pytest.mark.slow
def test_trains_below_mean_predictor(perovskite_subset, cache_root):
    store, table = checks.perovskite_batches(perovskite_subset, cache_root / "encoders_perov")
    checks.check_trains_below_mean_predictor(make, store, table)
