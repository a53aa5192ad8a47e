import pytest
import torch
import torch.nn.functional as F

from crystaltwins.layers import CGConv
from crystaltwins.layers.cgcnn_conv import EdgeGraph


def naive_cgconv(conv: CGConv, atom_fea, edge_fea, edge_index):
    """CGCNN's convolution written plainly: fc_full on v_i ⊕ v_j ⊕ u_ij per edge."""
    a = conv.atom_fea_len
    centre, neighbour = edge_index
    total = torch.cat((atom_fea[centre], atom_fea[neighbour], edge_fea), dim=1)
    gated = conv.bn1(conv.fc_full(total))
    nbr_filter, nbr_core = gated.chunk(2, dim=1)
    message = torch.sigmoid(nbr_filter) * F.softplus(nbr_core)
    summed = atom_fea.new_zeros(atom_fea.shape[0], a).index_add(0, centre, message)
    return F.softplus(atom_fea + conv.bn2(summed))


def test_plain_gated_sum_is_cgcnns_convolution():
    """The accelerator path (CGConv.gated_sum) computes CGCNN's function, forward and backward."""
    ours, naive = pair(dtype=torch.float64)
    atom_fea, edge_fea, edge_index = random_graph(dtype=torch.float64)
    x1 = atom_fea.clone().requires_grad_()
    x2 = atom_fea.clone().requires_grad_()
    out1 = F.softplus(x1 + ours.bn2(ours.gated_sum(x1, edge_fea, edge_index)))
    out2 = naive_cgconv(naive, x2, edge_fea, edge_index)
    torch.testing.assert_close(out1, out2, atol=1e-12, rtol=1e-12)
    out1.sum().backward()
    out2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-11, rtol=1e-11)


def random_graph(n_atoms=40, n_edges=300, a=16, k=41, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    atom_fea = (torch.randn(n_atoms, a, generator=gen) * 2.0 + 1.0).to(dtype)
    # the last 3 atoms are never centres (no edges of their own)
    centre = torch.randint(0, n_atoms - 3, (n_edges,), generator=gen)
    neighbour = torch.randint(0, n_atoms, (n_edges,), generator=gen)
    dist = 1.0 + 6.0 * torch.rand(n_edges, generator=gen)
    centres = torch.linspace(0, 8, k)
    edge_fea = torch.exp(-((dist[:, None] - centres) ** 2) / 0.2**2).to(dtype)
    return atom_fea, edge_fea, torch.stack((centre, neighbour))


def pair(a=16, k=41, dtype=torch.float32, seed=1):
    torch.manual_seed(seed)
    ours = CGConv(a, k).to(dtype)
    with torch.no_grad():  # non-trivial BatchNorm affine parameters
        for bn in (ours.bn1, ours.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    naive = CGConv(a, k).to(dtype)
    naive.load_state_dict(ours.state_dict())
    return ours, naive


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-11)])
def test_matches_naive_concatenation_training(dtype, tol):
    ours, naive = pair(dtype=dtype)
    atom_fea, edge_fea, edge_index = random_graph(dtype=dtype)
    x1 = atom_fea.clone().requires_grad_()
    x2 = atom_fea.clone().requires_grad_()
    out1 = ours(x1, edge_fea, edge_index)
    out2 = naive_cgconv(naive, x2, edge_fea, edge_index)
    assert out1.shape == atom_fea.shape
    torch.testing.assert_close(out1, out2, atol=tol, rtol=tol)

    grad = torch.randn_like(out1)
    out1.backward(grad)
    out2.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, atol=10 * tol, rtol=10 * tol)
    for (name, p1), (_, p2) in zip(ours.named_parameters(), naive.named_parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, atol=10 * tol, rtol=10 * tol, msg=name)
    # running statistics of both BatchNorms updated as BatchNorm1d does
    for (name, b1), (_, b2) in zip(ours.named_buffers(), naive.named_buffers(), strict=True):
        torch.testing.assert_close(b1, b2, atol=tol, rtol=tol, msg=name)


def test_matches_naive_in_eval_and_cumulative_momentum():
    ours, naive = pair()
    for m in (ours, naive):
        m.bn1.momentum = None  # cumulative moving average
    for seed in range(3):
        atom_fea, edge_fea, edge_index = random_graph(seed=seed)
        ours(atom_fea, edge_fea, edge_index)
        naive_cgconv(naive, atom_fea, edge_fea, edge_index)
    torch.testing.assert_close(ours.bn1.running_var, naive.bn1.running_var)
    assert int(ours.bn1.num_batches_tracked) == 3
    ours.eval()
    naive.eval()
    atom_fea, edge_fea, edge_index = random_graph(seed=7)
    torch.testing.assert_close(
        ours(atom_fea, edge_fea, edge_index),
        naive_cgconv(naive, atom_fea, edge_fea, edge_index),
        atol=1e-5,
        rtol=1e-5,
    )


def test_large_mean_edge_features_are_normalised_accurately():
    """The folded BatchNorm statistics stay accurate when the pre-activation mean is large."""
    ours, naive = pair()
    with torch.no_grad():
        ours.fc_full.bias.add_(50.0)
        naive.fc_full.bias.add_(50.0)
    atom_fea, edge_fea, edge_index = random_graph()
    torch.testing.assert_close(
        ours(atom_fea, edge_fea, edge_index),
        naive_cgconv(naive, atom_fea, edge_fea, edge_index),
        atol=1e-4,
        rtol=1e-4,
    )


def test_atoms_without_edges_get_zero_message():
    conv, _ = pair()
    conv.eval()
    atom_fea, edge_fea, edge_index = random_graph()
    out = conv(atom_fea, edge_fea, edge_index)
    bn2 = conv.bn2
    zero_message = (0.0 - bn2.running_mean) / torch.sqrt(bn2.running_var + bn2.eps)
    zero_message = zero_message * bn2.weight + bn2.bias
    expected = F.softplus(atom_fea[-3:] + zero_message)
    torch.testing.assert_close(out[-3:], expected)


def test_no_edges_at_all():
    conv, _ = pair()
    atom_fea = torch.randn(5, 16)
    out = conv(atom_fea, torch.zeros(0, 41), torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (5, 16)


def test_shared_edge_graph_gives_same_result():
    ours, naive = pair()
    atom_fea, edge_fea, edge_index = random_graph()
    graph = EdgeGraph(edge_fea, edge_index, atom_fea.shape[0])
    torch.testing.assert_close(
        ours(atom_fea, edge_fea, edge_index, graph),
        naive_cgconv(naive, atom_fea, edge_fea, edge_index),
        atol=1e-5,
        rtol=1e-5,
    )


def test_banded_edge_features_and_unsorted_edges_match_naive():
    """The band path (weighted embedding_bag) and grouping of unsorted edges are exact."""
    from crystaltwins.layers import GaussianExpansion

    gaussian = GaussianExpansion()
    ours, naive = pair()
    gen = torch.Generator().manual_seed(3)
    n_atoms, n_edges = 30, 250
    atom_fea = torch.randn(n_atoms, 16, generator=gen)
    # unsorted centres; atoms 0, 10 and 29 (first, middle, last) have no edges of their own
    centre = torch.randint(1, n_atoms - 1, (n_edges,), generator=gen)
    centre[centre == 10] = 11
    neighbour = torch.randint(0, n_atoms, (n_edges,), generator=gen)
    edge_index = torch.stack((centre, neighbour))
    dist = 0.5 + 8.0 * torch.rand(n_edges, generator=gen)
    band = gaussian.banded(dist)
    edge_fea = gaussian(dist)
    graph = EdgeGraph(edge_fea, edge_index, n_atoms, edge_band=band)
    x1 = atom_fea.clone().requires_grad_()
    x2 = atom_fea.clone().requires_grad_()
    out1 = ours(x1, edge_fea, edge_index, graph)
    out2 = naive_cgconv(naive, x2, edge_fea, edge_index)
    torch.testing.assert_close(out1, out2, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out1)
    out1.backward(grad)
    out2.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
    for (name, p1), (_, p2) in zip(ours.named_parameters(), naive.named_parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_parameter_names_are_cgcnn_ones():
    keys = set(CGConv(64, 41).state_dict())
    assert {"fc_full.weight", "fc_full.bias", "bn1.running_mean", "bn2.weight"} <= keys
    assert CGConv(64, 41).fc_full.weight.shape == (128, 169)
