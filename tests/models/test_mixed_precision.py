"""Mixed precision: under autocast the encoder's message passing stays in float32."""

from __future__ import annotations

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
