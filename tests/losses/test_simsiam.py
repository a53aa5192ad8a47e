import pytest
import torch
import torch.nn.functional as F

from crystaltwins.losses import OBJECTIVES, SimSiamLoss, build_objective
from crystaltwins.models import SimSiamPredictor


def views(n=10, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z_a, z_a + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)


def test_owns_its_predictor():
    loss = SimSiamLoss(dim=6, hidden_dim=4)
    assert isinstance(loss.predictor, SimSiamPredictor)
    names = {name for name, _ in loss.named_parameters()}
    assert names == {
        "predictor.0.weight",
        "predictor.0.bias",
        "predictor.2.weight",
        "predictor.2.bias",
    }
    assert loss.predictor[0].out_features == 4 and loss.predictor[2].out_features == 6


def test_value_matches_definition():
    torch.manual_seed(0)
    loss = SimSiamLoss(dim=6).double()
    z_a, z_b = views()
    p_a, p_b = loss.predictor(z_a), loss.predictor(z_b)
    expected = -(F.cosine_similarity(p_a, z_b).mean() + F.cosine_similarity(p_b, z_a).mean()) / 2
    torch.testing.assert_close(loss(z_a, z_b), expected)


def test_identical_views_with_identity_predictor_give_minus_one():
    z_a, _ = views()
    loss = SimSiamLoss(predictor=torch.nn.Identity())
    assert float(loss(z_a, z_a)) == pytest.approx(-1.0)


def test_stop_gradient_only_predictor_branch_carries_gradient():
    z_a, z_b = views()
    z1, z2 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    SimSiamLoss(predictor=torch.nn.Identity())(z1, z2).backward()
    # with the stop-gradient, z_a receives only -1/2 d cos(z_a, z_b)/d z_a (from p_a), and
    # nothing through the target branch sg(z_a)
    za, zb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    (-0.5 * F.cosine_similarity(za, z_b).mean()).backward()
    (-0.5 * F.cosine_similarity(zb, z_a).mean()).backward()
    torch.testing.assert_close(z1.grad, za.grad)
    torch.testing.assert_close(z2.grad, zb.grad)
    # without it the gradient would be twice as large
    z3 = z_a.clone().requires_grad_()
    (-F.cosine_similarity(z3, z_b).mean()).backward()
    torch.testing.assert_close(z1.grad * 2, z3.grad)


def test_predictor_gets_gradient_and_target_does_not():
    torch.manual_seed(0)
    loss = SimSiamLoss(dim=6).double()
    z_a, z_b = views()
    z_b = z_b.requires_grad_()
    pred_b = loss.predictor(z_b)
    # target branch only: gradient through sg(z_a) must be zero
    z_a_leaf = z_a.clone().requires_grad_()
    (-(F.cosine_similarity(pred_b, z_a_leaf.detach()).mean())).backward()
    assert z_a_leaf.grad is None
    out = loss(z_a.clone().requires_grad_(), z_b)
    out.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


def test_registry():
    assert OBJECTIVES["simsiam"] is SimSiamLoss
    assert isinstance(build_objective("SimSiam", dim=8), SimSiamLoss)
