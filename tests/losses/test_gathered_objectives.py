"""VICReg and NT-Xent under torch.distributed: gathered views give the single-process loss and,
after DDP's gradient averaging, its gradient (uneven shares too)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crystaltwins.losses import NTXentLoss, VICRegLoss

LOSSES = {"vicreg": VICRegLoss, "nt_xent": NTXentLoss}
SPLITS = [[4, 4], [5, 3]]


def _projector() -> torch.nn.Linear:
    torch.manual_seed(123)
    return torch.nn.Linear(6, 5).double()


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x_a = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    return x_a, x_a + 0.3 * torch.randn(n, 6, generator=gen, dtype=torch.float64)


def _loss_and_grads(name: str, rows: slice, n: int, world: int = 1):
    proj = _projector()
    x_a, x_b = _inputs(n)
    loss = LOSSES[name]()(proj(x_a[rows]), proj(x_b[rows]))
    loss.backward()
    grads = []
    for p in proj.parameters():
        if world > 1:  # what DDP does: all-reduce and average
            dist.all_reduce(p.grad)
        grads.append(p.grad / world)
    return loss.detach(), grads


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = {}
        for name in LOSSES:
            for k, split in enumerate(SPLITS):
                lo = sum(split[:rank])
                rows = slice(lo, lo + split[rank])
                results[name, k] = _loss_and_grads(name, rows, sum(split), world)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_distributed_gather_equals_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        per_rank = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    for name in LOSSES:
        for k, split in enumerate(SPLITS):
            loss, grads = _loss_and_grads(name, slice(None), sum(split))
            for rank in range(2):
                rank_loss, rank_grads = per_rank[rank][name, k]
                torch.testing.assert_close(rank_loss, loss, atol=1e-9, rtol=0)
                for g_rank, g in zip(rank_grads, grads, strict=True):
                    torch.testing.assert_close(g_rank, g, atol=1e-9, rtol=0)
        # without the other rank's rows the loss differs (the gathering is what makes it equal)
        half, _ = _loss_and_grads(name, slice(0, 4), 8)
        assert abs(float(half) - float(_loss_and_grads(name, slice(None), 8)[0])) > 1e-3
