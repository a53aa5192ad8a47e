import numpy as np
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


def test_far_values_are_tiny_not_denormal():
    out = GaussianExpansion()(torch.tensor([0.0]))
    assert out[0, 0] == 1.0
    assert float(out[0, -1]) < 1e-37
