"""OGCNN encoder: the encoder checks, the OFM against the authors' per-atom formula, the
valence vectors of the OGCNN code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crystaltwins.graph.ofm import valence_table, valence_vector
from crystaltwins.models.ogcnn import OFM_FEATURES, OGCNNEncoder, orbital_field_matrix
from tests.models import encoder_checks as checks


def make(table, **kw) -> OGCNNEncoder:
    torch.manual_seed(0)
    return OGCNNEncoder(
        table, **{"atom_fea_len": 16, "hot_fea_len": 24, "n_conv": 2, "h_fea_len": 20, **kw}
    )


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


def authors_ofm(z, edge_index, distance, table):
    """make_hot_for_atom_i of the OGCNN code (OGCNN_CT/ogcnn/data.py), neighbour by neighbour,
    with every solid-angle ratio 1: concatenate(o_p.T, Σ_k o_p o_k / (d²)²) → (32, 33)."""
    rows = []
    for p in range(len(z)):
        hv_p = table[z[p]].reshape(32, 1)
        x0 = np.zeros((32, 32))
        for e in np.flatnonzero(edge_index[0] == p):
            r_pk = distance[e] * distance[e]
            x0 += hv_p @ ((1 / r_pk**2) * table[z[edge_index[1, e]]].reshape(1, 32))
        rows.append(np.concatenate((hv_p, x0), axis=1).reshape(-1))
    return np.stack(rows)


def test_ofm_equals_the_authors_formula(crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(3, seed=5))
    table = valence_table()
    ours = orbital_field_matrix(
        batch.atomic_numbers,
        batch.edge_index,
        batch.edge_distance.double(),
        torch.from_numpy(table).double(),
    )
    theirs = authors_ofm(
        batch.atomic_numbers.numpy(),
        batch.edge_index.numpy(),
        batch.edge_distance.double().numpy(),
        table,
    )
    assert ours.shape == (batch.num_atoms, OFM_FEATURES)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-15)
    assert np.count_nonzero(theirs[:, 1::33]) > 0  # the field part is really exercised


def test_masked_atom_leaves_no_trace_in_the_ofm(crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(1, seed=6, sizes=(4, 5)))
    table = torch.from_numpy(valence_table())
    z = batch.atomic_numbers.clone()
    z[0] = 0
    ofm = orbital_field_matrix(z, batch.edge_index, batch.edge_distance, table)
    assert (ofm[0] == 0).all()
    # its neighbours' OFM equals that of a graph without the masked atom's edges
    keep = batch.edge_index[1] != 0
    without = orbital_field_matrix(z, batch.edge_index[:, keep], batch.edge_distance[keep], table)
    torch.testing.assert_close(ofm, without)


def test_valence_vectors_of_the_ogcnn_code():
    def ones(symbol):
        return set(np.flatnonzero(valence_vector(symbol)).tolist())

    assert ones("H") == {0}  # s1
    assert ones("Fe") == {13, 1}  # 3d6 4s2
    assert ones("O") == {1, 5}  # 2s2 2p4
    assert ones("Pr") == {1}  # '[Xe]4f3 6s2': the code keeps only 6s2
    assert ones("He") == set() and ones("Rn") == set()
    table = valence_table()
    assert table.shape == (119, 32) and (table[0] == 0).all()


def test_widths_of_the_published_defaults_build(table):
    encoder = OGCNNEncoder(table, atom_fea_len=1536, hot_fea_len=768, n_conv=1)
    assert encoder.embedding1.in_features == table.shape[1] + 1056
    assert encoder.convs[0].fc_full.out_features == 3072


@pytest.mark.slow
def test_trains_below_mean_predictor(perovskite_subset, cache_root):
    store, table = checks.perovskite_batches(perovskite_subset, cache_root / "encoders_perov")
    checks.check_trains_below_mean_predictor(make, store, table)
