import io
import json

import pytest
import torch
import torch.nn.functional as F

from crystaltwins.models import (
    CGCNNEncoder,
    CrystalTwinsModel,
    ProjectionHead,
    PropertyHead,
    PropertyModel,
)


def make_encoder(table, **kw) -> CGCNNEncoder:
    torch.manual_seed(0)
    encoder = CGCNNEncoder(table, atom_fea_len=16, n_conv=2, h_fea_len=24, **kw)
    with torch.no_grad():  # non-trivial BatchNorm statistics for eval-mode tests
        for conv in encoder.convs:
            for bn in (conv.bn1, conv.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
    return encoder


def test_shapes(table, crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(5))
    encoder = make_encoder(table)
    emb = encoder(batch)
    assert emb.shape == (5, 24)
    assert encoder.atom_embeddings(batch).shape == (batch.num_atoms, 16)
    model = CrystalTwinsModel(encoder, ProjectionHead(24, 24, 32))
    assert model(batch).shape == (5, 32)
    assert model.embed(batch).shape == (5, 24)
    prop = PropertyModel(encoder, PropertyHead(24, out_dim=3))
    assert prop(batch).shape == (5, 3)
    assert prop.head[0].out_features == 12  # hidden = in_dim // 2 as in Crystal Twins


def test_masked_atoms_have_zero_element_features(table, crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(3))
    batch.atomic_numbers[::2] = 0
    encoder = make_encoder(table)
    feats = encoder.element_features(batch.atomic_numbers)
    assert feats.shape == (batch.num_atoms, 92)
    assert torch.all(feats[::2] == 0)
    assert torch.equal(feats[1::2], table[batch.atomic_numbers[1::2]])
    # so a masked atom's embedding is the embedding bias alone
    x = encoder.embedding(feats)
    torch.testing.assert_close(x[0], encoder.embedding.bias)
    assert encoder(batch).isfinite().all()


def test_row_zero_must_be_zero(table):
    bad = table.clone()
    bad[0, 3] = 1.0
    with pytest.raises(ValueError, match="row 0"):
        CGCNNEncoder(bad)


def test_mean_pooling_and_readout(table, crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(4))
    encoder = make_encoder(table)
    encoder.eval()
    atoms = encoder.atom_embeddings(batch)
    pooled = torch.stack([atoms[batch.crystal_index == k].mean(0) for k in range(4)])
    # the original code applies softplus before and after conv_to_fc
    expected = F.softplus(encoder.conv_to_fc(F.softplus(pooled)))
    torch.testing.assert_close(encoder(batch), expected)


def test_eval_prediction_independent_of_batch(table, crystals_factory, collate_fn):
    crystals = crystals_factory(6, seed=3)
    encoder = make_encoder(table)
    model = PropertyModel(encoder, PropertyHead(24, out_dim=2))
    model.eval()
    with torch.no_grad():
        together = model(collate_fn(crystals))
        for k, crystal in enumerate(crystals):
            alone = model(collate_fn([crystal]))
            torch.testing.assert_close(alone[0], together[k], atol=1e-5, rtol=1e-5)
        shuffled = model(collate_fn(crystals[::-1]))
        torch.testing.assert_close(shuffled.flip(0), together, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip(table, crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(4, seed=5))
    encoder = make_encoder(table, gaussian={"dmax": 6.0, "step": 0.25})
    encoder.train()
    encoder(batch)  # move the running statistics
    encoder.eval()
    expected = encoder(batch)

    buffer = io.BytesIO()
    torch.save(
        {
            "config": encoder.config,
            "atom_features": encoder.atom_features,
            "state": encoder.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    json.dumps(saved["config"])  # the config is JSON-able
    rebuilt = CGCNNEncoder.from_config(saved["config"], saved["atom_features"], saved["state"])
    rebuilt.eval()
    torch.testing.assert_close(rebuilt(batch), expected)
    assert rebuilt.gaussian.num_features == encoder.gaussian.num_features == 25


def test_state_dict_keys_are_cgcnn_names(table):
    keys = set(CGCNNEncoder(table).state_dict())
    assert "atom_features" not in keys and "gaussian.centres" not in keys
    assert {"embedding.weight", "convs.2.fc_full.weight", "convs.0.bn1.running_var"} <= keys
    assert {"conv_to_fc.weight", "conv_to_fc.bias"} <= keys
    assert set(ProjectionHead(128, 128, 256).state_dict()) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }


def test_training_step_reduces_nothing_to_nan(table, crystals_factory, collate_fn):
    batch = collate_fn(crystals_factory(8, seed=9))
    model = CrystalTwinsModel(make_encoder(table), ProjectionHead(24, 24, 16))
    out = model(batch)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.isfinite().all() for g in grads)


def test_plain_accelerator_path_equals_cpu_path(monkeypatch, data_dir, tmp_path):
    """The encoder's accelerator path (dense features, plain convolutions) gives the CPU path's
    outputs and gradients on real crystals, in training and evaluation mode."""
    import numpy as np

    from crystaltwins.data.cache import GraphCache, build_graph_cache
    from crystaltwins.data.gather import GraphStore
    from crystaltwins.graph.atom_features import AtomFeaturizer
    from crystaltwins.layers import cgcnn_conv
    from crystaltwins.training.common import new_encoder

    build_graph_cache(data_dir / "samples" / "cgcnn_regression", tmp_path / "c", progress=False)
    cache = GraphCache(tmp_path / "c")
    batch = GraphStore(cache).batch(np.arange(len(cache)))
    torch.manual_seed(0)
    encoder = new_encoder(AtomFeaturizer.builtin(), cache.settings)
    for training in (True, False):
        encoder.train(training)
        results = []
        for plain in (False, True):
            monkeypatch.setattr(cgcnn_conv, "plain_path", lambda x, plain=plain: plain)
            encoder.zero_grad()
            state = {k: v.clone() for k, v in encoder.state_dict().items()}
            out = encoder(batch)
            out.square().sum().backward()
            grads = [p.grad.clone() for p in encoder.parameters()]
            results.append((out.detach(), grads, encoder.state_dict()))
            encoder.load_state_dict(state)  # same running statistics for both paths
        (out_a, grads_a, buf_a), (out_b, grads_b, buf_b) = results
        torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
        # float32, relative to the largest gradient (fc_full's bias has an exactly zero gradient
        # in training, before the edge BatchNorm: rounding noise on both sides)
        scale = max(float(g.abs().max()) for g in grads_a)
        for ga, gb in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(ga, gb, atol=2e-5 * scale, rtol=1e-3)
        for name in buf_a:
            torch.testing.assert_close(buf_a[name], buf_b[name], atol=1e-5, rtol=1e-5, msg=name)
