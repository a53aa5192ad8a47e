"""Stacked models: the masked softmax and the choice of the architecture's class (the stacked
forward passes are compared with the single models in tests/training/test_members.py)."""

from __future__ import annotations

import pytest
import torch

from crystaltwins.layers.graph_ops import segment_softmax
from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.gatgnn import GATGNNEncoder
from crystaltwins.models.gin import GINEncoder
from crystaltwins.models.grouped import (
    GroupedGATGNN,
    GroupedGIN,
    GroupedPropertyModels,
    masked_segment_softmax,
    stack_models,
)
from crystaltwins.models.heads import PropertyHead
from crystaltwins.models.ogcnn import OGCNNEncoder
from tests.models.conftest import random_table


def test_masked_softmax_is_the_softmax_of_the_real_rows():
    """Real rows get the softmax of their group's real rows; padded rows get 0 and move
    nothing, even with huge scores or in a group of padded rows only (no NaN, forward or
    backward)."""
    gen = torch.Generator().manual_seed(0)
    real_scores = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    real_index = torch.tensor([0, 0, 1, 1, 1, 3, 3])
    scores = torch.cat((real_scores, torch.full((3, 3), 1e4, dtype=torch.float64)))
    scores.requires_grad_(True)
    index = torch.cat((real_index, torch.tensor([0, 2, 2])))  # group 2: padded rows only
    mask = torch.cat((torch.ones(7), torch.zeros(3))).double()
    got = masked_segment_softmax(scores, index, mask, 4)
    want = segment_softmax(real_scores, real_index, 4)
    assert torch.allclose(got[:7], want, rtol=1e-14, atol=0)
    assert torch.equal(got[7:], torch.zeros(3, 3, dtype=torch.float64))
    (got * torch.randn(10, 3, generator=gen, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.equal(
        scores.grad[7:], torch.zeros(3, 3, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "encoder,stacked",
    [
        (CGCNNEncoder, GroupedPropertyModels),
        (OGCNNEncoder, GroupedPropertyModels),
        (GINEncoder, GroupedGIN),
        (GATGNNEncoder, GroupedGATGNN),
    ],
)
def test_stack_models_picks_the_architectures_class(encoder, stacked):
    encoders = [encoder(random_table()) for _ in range(2)]
    heads = [PropertyHead(e.out_dim, 8, 1) for e in encoders]
    model = stack_models(encoders, heads)
    assert type(model) is stacked and model.members == 2
    # every parameter and buffer of a member comes back under its own name
    enc_state, head_state = model.member_state(1)
    assert set(enc_state) == set(encoders[1].state_dict())
    assert all(torch.equal(enc_state[n], t) for n, t in encoders[1].state_dict().items())
    assert set(head_state) == set(heads[1].state_dict())


def test_stack_models_refuses_mixed_architectures_and_settings():
    gin, gatgnn = GINEncoder(random_table()), GATGNNEncoder(random_table())
    with pytest.raises(ValueError, match="one stackable kind"):
        stack_models([gin, gatgnn], [PropertyHead(256, 8, 1), PropertyHead(64, 8, 1)])
    wide, narrow = GINEncoder(random_table()), GINEncoder(random_table(), emb_dim=64)
    with pytest.raises(ValueError, match="same encoder settings"):
        stack_models([wide, narrow], [PropertyHead(256, 8, 1)] * 2)
