import numpy as np
import pytest
import torch

from crystaltwins.layers import GaussianExpansion


def test_defaults_match_cgcnn():
    g = GaussianExpansion()
    assert g.num_features == 41
    np.testing.assert_allclose(g.centres.numpy(), np.arange(0.0, 8.2, 0.2), atol=1e-6)
    d = torch.tensor([0.0, 1.234, 3.5, 7.99, 9.0])
    expected = np.exp(-((d.numpy()[:, None] - np.arange(0.0, 8.2, 0.2)) ** 2) / 0.2**2)
    out = g(d)
    assert out.shape == (5, 41)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_custom_grid_and_var():
    g = GaussianExpansion(dmin=1.0, dmax=3.0, step=0.5, var=0.7)
    assert g.num_features == 5
    d = torch.tensor([1.2, 2.9])
    expected = np.exp(-((d.numpy()[:, None] - np.arange(1.0, 3.5, 0.5)) ** 2) / 0.7**2)
    np.testing.assert_allclose(g(d).numpy(), expected, rtol=1e-5)


def test_centres_are_a_non_persistent_buffer():
    g = GaussianExpansion()
    assert "centres" in dict(g.named_buffers())
    assert g.state_dict() == {}


def test_negligible_values_are_exactly_zero():
    g = GaussianExpansion()
    out = g(torch.tensor([0.0, 4.05]))
    assert out[0, 0] == 1.0
    assert torch.all(out[0, 6:] == 0)  # exp(-36) and below: no denormals downstream
    assert out[0, 5] == pytest.approx(np.exp(-25.0), rel=1e-5)  # exp(-25) is kept
    assert torch.all((out == 0) | (out > 9e-14))


@pytest.mark.parametrize(
    "kw", [{}, {"var": 0.5}, {"var": 3.0}, {"dmin": 1.0, "dmax": 5.0, "step": 0.1}]
)
def test_banded_describes_the_dense_features_exactly(kw):
    g = GaussianExpansion(**kw)
    d = torch.cat([torch.rand(2000) * 10.0 - 1.0, torch.tensor([-5.0, 0.0, 8.0, 20.0])])
    index, value = g.banded(d)
    assert index.shape == value.shape == (d.shape[0], g.band_width)
    assert index.min() >= 0 and index.max() < g.num_features
    assert torch.all(index.sort(dim=1).values.diff(dim=1) > 0)  # distinct centres per edge
    dense = torch.zeros(d.shape[0], g.num_features).scatter_(1, index, value)
    assert torch.equal(dense, g(d))


def test_band_width():
    assert GaussianExpansion().band_width == 11
    assert GaussianExpansion(var=3.0).band_width == 41
