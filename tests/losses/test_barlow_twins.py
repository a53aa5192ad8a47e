import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crystaltwins.losses import OBJECTIVES, BarlowTwinsLoss, build_objective


def naive_barlow(z_a, z_b, lambd=0.0051, eps=1e-5, normalize=True):
    """Barlow Twins written plainly, as the Crystal Twins code runs it: the projections
    L2-normalised (contrast.py ``F.normalize(z, dim=1)``), then BatchNorm1d(affine=False)."""
    if normalize:
        z_a, z_b = (
            torch.nn.functional.normalize(z_a, dim=1),
            torch.nn.functional.normalize(z_b, dim=1),
        )
    n, d = z_a.shape
    bn = torch.nn.BatchNorm1d(d, affine=False, eps=eps).to(z_a.dtype)
    c = bn(z_a).T @ bn(z_b) / n
    loss = z_a.new_zeros(())
    for i in range(d):
        for j in range(d):
            loss = loss + ((1 - c[i, j]) ** 2 if i == j else lambd * c[i, j] ** 2)
    return loss


def views(n=16, d=8, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=gen, dtype=dtype)
    z_b = z_a + 0.5 * torch.randn(n, d, generator=gen, dtype=dtype)
    return z_a, z_b


def test_matches_naive_implementation():
    z_a, z_b = views()
    torch.testing.assert_close(BarlowTwinsLoss()(z_a, z_b), naive_barlow(z_a, z_b))
    z_a, z_b = views(dtype=torch.float32)
    torch.testing.assert_close(
        BarlowTwinsLoss(lambda_=0.1)(z_a, z_b), naive_barlow(z_a, z_b, 0.1), rtol=1e-5, atol=1e-5
    )
    # the original Barlow Twins (no normalisation) on request; the two differ
    plain = BarlowTwinsLoss(l2_normalize=False)(z_a.double(), z_b.double())
    torch.testing.assert_close(plain, naive_barlow(z_a.double(), z_b.double(), normalize=False))
    assert abs(float(plain) - float(BarlowTwinsLoss()(z_a.double(), z_b.double()))) > 1e-3


def test_gradient_matches_naive():
    z_a, z_b = views()
    z1, z2 = z_a.clone().requires_grad_(), z_a.clone().requires_grad_()
    BarlowTwinsLoss()(z1, z_b).backward()
    naive_barlow(z2, z_b).backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_identical_decorrelated_views_give_zero():
    # columns of a Hadamard matrix without the constant one: mean 0, biased std 1, orthogonal
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:]  # (8, 7)
    loss = BarlowTwinsLoss(eps=0.0)(z, z)
    assert abs(float(loss)) < 1e-12
    # without the L2 normalisation, any positive per-dimension affine change of a view leaves
    # it unchanged
    scaled = z * torch.linspace(0.5, 3.0, 7, dtype=torch.float64) + 4.0
    assert abs(float(BarlowTwinsLoss(eps=0.0, l2_normalize=False)(z, scaled))) < 1e-12


def test_identical_views_zero_on_diagonal_term():
    z_a, _ = views()
    c = BarlowTwinsLoss(eps=0.0).cross_correlation(z_a, z_a)
    torch.testing.assert_close(torch.diagonal(c), torch.ones(8, dtype=torch.float64))
    assert abs(float(BarlowTwinsLoss(lambda_=0.0, eps=0.0)(z_a, z_a))) < 1e-20
    # with the default eps = 1e-5 (BatchNorm's), C_ii = var / (var + eps)
    c = BarlowTwinsLoss().cross_correlation(z_a, z_a)
    var = z_a.var(dim=0, correction=0)
    torch.testing.assert_close(torch.diagonal(c), var / (var + 1e-5))


def test_invariant_to_batch_order():
    z_a, z_b = views()
    perm = torch.randperm(z_a.shape[0], generator=torch.Generator().manual_seed(1))
    loss = BarlowTwinsLoss()
    torch.testing.assert_close(loss(z_a, z_b), loss(z_a[perm], z_b[perm]))


def test_lambda_scales_only_the_off_diagonal_term():
    z_a, z_b = views()
    on_diag = float(BarlowTwinsLoss(lambda_=0.0)(z_a, z_b))
    off_diag = float(BarlowTwinsLoss(lambda_=1.0)(z_a, z_b)) - on_diag
    assert off_diag > 0
    for lambd in (0.0051, 0.3, 2.0):
        value = float(BarlowTwinsLoss(lambda_=lambd)(z_a, z_b))
        assert value == pytest.approx(on_diag + lambd * off_diag, rel=1e-10)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError):
        BarlowTwinsLoss()(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError):
        BarlowTwinsLoss()(torch.randn(1, 3), torch.randn(1, 3))


def test_registry():
    assert OBJECTIVES["barlow_twins"] is BarlowTwinsLoss
    loss = build_objective("Barlow-Twins", lambda_=0.01)
    assert isinstance(loss, BarlowTwinsLoss) and loss.lambda_ == 0.01
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("no_such_objective")


# ----------------------------------------------------------------------------- distributed
N_IN, N_OUT = 6, 5


def _projector() -> torch.nn.Linear:
    torch.manual_seed(123)
    return torch.nn.Linear(N_IN, N_OUT).double()


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x_a = torch.randn(n, N_IN, generator=gen, dtype=torch.float64)
    return x_a, x_a + 0.3 * torch.randn(n, N_IN, generator=gen, dtype=torch.float64)


def _single_process(n: int):
    proj = _projector()
    x_a, x_b = _inputs(n)
    loss = BarlowTwinsLoss()(proj(x_a), proj(x_b))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in proj.parameters()]


def _worker(rank: int, world: int, init_file: str, splits: list[list[int]], out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = []
        for split in splits:
            proj = _projector()
            x_a, x_b = _inputs(sum(split))
            lo = sum(split[:rank])
            rows = slice(lo, lo + split[rank])
            loss = BarlowTwinsLoss()(proj(x_a[rows]), proj(x_b[rows]))
            loss.backward()
            grads = []
            for p in proj.parameters():  # what DDP does: all-reduce and average
                dist.all_reduce(p.grad)
                grads.append(p.grad / world)
            results.append((loss.detach(), grads))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_distributed_gather_equals_single_process():
    splits = [[4, 4], [5, 3]]  # even halves, and uneven shares
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(2, init_file, splits, tmp), nprocs=2, join=True)
        per_rank = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    for k, split in enumerate(splits):
        loss, grads = _single_process(sum(split))
        for rank in range(2):
            rank_loss, rank_grads = per_rank[rank][k]
            torch.testing.assert_close(rank_loss, loss, atol=1e-6, rtol=0)
            for g_rank, g in zip(rank_grads, grads, strict=True):
                torch.testing.assert_close(g_rank, g, atol=1e-6, rtol=0)
    # without gathering, each rank would see only its own half: the losses differ
    proj = _projector()
    x_a, x_b = _inputs(8)
    with torch.no_grad():
        half = BarlowTwinsLoss()(proj(x_a[:4]), proj(x_b[:4]))
    assert abs(float(half) - float(_single_process(8)[0])) > 1e-3
