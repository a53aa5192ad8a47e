"""Mixed precision: under autocast the encoder's message passing stays in float32."""

from __future__ import annotations

import pytest
import torch

from crystaltwins.losses import BarlowTwinsLoss
from crystaltwins.models import CGCNNEncoder, ProjectionHead
from tests.models.conftest import collate, random_table


def test_encoder_trains_under_autocast(crystals_factory):
    batch = collate(crystals_factory(8, seed=3))
    encoder, projector = CGCNNEncoder(random_table()), ProjectionHead(128, 128, 256)
    full = projector(encoder(batch))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # stands in for CUDA float16 / bfloat16
        z_a = projector(encoder(batch))
        z_b = projector(encoder(batch))
        loss = BarlowTwinsLoss()(z_a, z_b + 0.01)
    loss.backward()
    assert z_a.dtype == torch.bfloat16  # the heads ran in half precision
    assert (
        encoder.embedding.weight.grad is not None
        and torch.isfinite(encoder.embedding.weight.grad).all()
    )
    torch.testing.assert_close(z_a.float(), full, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("name", ["gin", "gatgnn"])
def test_distances_are_expanded_in_float32_under_autocast(crystals_factory, name):
    """GIN and GATGNN expand the edge lengths in float32 under autocast (CGCNN and OGCNN run
    their message passing with autocast off, above): bfloat16 rounds 7.13-7.17 Å to steps of
    0.03 Å, as large as a view's perturbation."""
    from crystaltwins.models.registry import build_encoder

    batch = collate(crystals_factory(4, seed=5))
    encoder = build_encoder(name, random_table())
    seen = []
    encoder.gaussian.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoder(batch)
    assert seen and set(seen) == {torch.float32}


@pytest.mark.parametrize("name", ["gin", "gatgnn"])
def test_half_precision_weights_still_run(crystals_factory, name):
    """--precision bf16-true / 16-true: the float32 expansion is cast back to the weights'
    dtype (it met bfloat16 weights in float32 and stopped)."""
    from crystaltwins.models.registry import build_encoder

    batch = collate(crystals_factory(4, seed=5))
    encoder = build_encoder(name, random_table()).to(torch.bfloat16)
    assert encoder(batch).dtype == torch.bfloat16


def test_denoising_head_expands_float32_lengths_under_autocast():
    from crystaltwins.models.pretext_heads import EdgeDistanceHead

    head = EdgeDistanceHead(16, 8)
    seen = []
    head.gaussian.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    atoms = torch.randn(5, 16, dtype=torch.bfloat16)
    edges = torch.tensor([[0, 1, 2], [1, 2, 3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(atoms, edges, torch.tensor([7.13, 7.15, 7.17]))
    assert seen == [torch.float32] and out.shape == (3,)
