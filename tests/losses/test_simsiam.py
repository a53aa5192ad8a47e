import pytest
import torch
import torch.nn.functional as F

from crystaltwins.losses import OBJECTIVES, SimSiamLoss, build_objective
from crystaltwins.models import SimSiamPredictor


def views(n=10, d=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return z_a, z_a + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)


def test_loss_has_no_parameters_and_asks_for_predictions():
    loss = SimSiamLoss()
    assert list(loss.parameters()) == [] and SimSiamLoss.uses_predictor


def test_value_matches_definition():
    torch.manual_seed(0)
    predictor = SimSiamPredictor(6).double()
    z_a, z_b = views()
    p_a, p_b = predictor(z_a), predictor(z_b)
    expected = -(F.cosine_similarity(p_a, z_b).mean() + F.cosine_similarity(p_b, z_a).mean()) / 2
    torch.testing.assert_close(SimSiamLoss()(z_a, z_b, p_a, p_b), expected)


def test_identical_views_with_identity_predictor_give_minus_one():
    z_a, _ = views()
    assert float(SimSiamLoss()(z_a, z_a, z_a, z_a)) == pytest.approx(-1.0)


def test_stop_gradient_only_predictor_branch_carries_gradient():
    z_a, z_b = views()
    z1, z2 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    SimSiamLoss()(z1, z2, z1, z2).backward()  # identity predictor
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
    predictor = SimSiamPredictor(6).double()
    z_a, z_b = views()
    z_b = z_b.requires_grad_()
    pred_b = predictor(z_b)
    # target branch only: gradient through sg(z_a) must be zero
    z_a_leaf = z_a.clone().requires_grad_()
    (-(F.cosine_similarity(pred_b, z_a_leaf.detach()).mean())).backward()
    assert z_a_leaf.grad is None
    predictor.zero_grad()
    z_a = z_a.clone().requires_grad_()
    SimSiamLoss()(z_a, z_b, predictor(z_a), predictor(z_b)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())


def test_mismatched_shapes_are_refused():
    z_a, z_b = views()
    with pytest.raises(ValueError, match="equal shape"):
        SimSiamLoss()(z_a, z_b, z_a[:, :3], z_b)


def test_registry():
    assert OBJECTIVES["simsiam"] is SimSiamLoss
    # settings of other objectives are left aside
    assert isinstance(build_objective("SimSiam", lambda_=0.1), SimSiamLoss)
