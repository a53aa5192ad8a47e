"""The elementwise floor of a CPU fine-tuning step: what the gate's functions alone cost.

A CGCNN convolution in training evaluates, on every (edge, channel) of a batch, ``sigmoid`` of the
filter and ``softplus`` of the core in the forward and ``sigmoid`` of the core in the backward. For a
perovskite batch (128 crystals, 640 atoms, 7,680 edges, 64 channels) that is 3 x 491,520 values per
convolution, 3 convolutions per step, whatever the implementation (eager PyTorch, the fused kernel, a
compiler). This script times those calls alone, as PyTorch provides them on this CPU (and ``exp``,
``log``, ``log1p`` and ``tanh`` to show which are vectorised), at each thread count, plus the
edge map ``W [v_i | v_j | u_ij]`` as the project computes it (a weighted ``embedding_bag`` over the
Gaussian band) and as a dense product with gathers, and one float32 matrix product for the
machine's arithmetic rate. Issue 12 asks for a step several times faster than the one measured
by ``profile_finetune_step.py``; this is the part of the step no reorganisation removes.

    python benchmarks/bench_elementwise_floor.py [--threads 1 2] [--repeats 300]
"""

from __future__ import annotations

import argparse
import datetime
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_fused_kernel import timed as fused_kernel_timed

from crystaltwins.layers.cgcnn_conv import EdgeGraph, _edge_linear
from crystaltwins.layers.gaussian import GaussianExpansion
from crystaltwins.training.common import keep_freed_memory

ATOMS, EDGES_PER_ATOM, CHANNELS, CONVOLUTIONS = 640, 12, 64, 3


def timed(call: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``call`` (:func:`bench_fused_kernel.timed`)."""
    return fused_kernel_timed(call, repeats)[0]  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args(argv)
    tuned = keep_freed_memory()  # as training does (off with CRYSTALTWINS_TUNE_MALLOC=0)

    gen = torch.Generator().manual_seed(0)
    edges = ATOMS * EDGES_PER_ATOM
    values = 3.0 * torch.randn(edges, CHANNELS, generator=gen)
    out = torch.empty_like(values)
    centre = torch.arange(ATOMS).repeat_interleave(EDGES_PER_ATOM)
    neighbour = (centre // 5) * 5 + torch.randint(0, 5, (edges,), generator=gen)
    distance = 1.0 + 7.0 * torch.rand(edges, generator=gen)
    gaussian = GaussianExpansion()
    edge_fea = gaussian(distance)
    index = torch.stack((centre, neighbour))
    banded = EdgeGraph(edge_fea, index, ATOMS, edge_band=gaussian.banded(distance))
    table_i, table_j = (torch.randn(ATOMS, CHANNELS, generator=gen) for _ in range(2))
    w_u = torch.randn(CHANNELS, edge_fea.shape[1], generator=gen)
    square = torch.randn(1024, 1024, generator=gen)

    scratch = torch.empty_like(values)

    def softplus_by_parts() -> torch.Tensor:
        torch.exp(torch.abs(values, out=scratch).neg_(), out=scratch)
        return torch.log1p(scratch, out=scratch).add_(torch.relu(values))

    def dense_edge_map() -> torch.Tensor:
        z = torch.addmm(table_i.index_select(0, centre), edge_fea, w_u.t())
        return z.add_(table_j.index_select(0, neighbour))

    print(
        f"torch {torch.__version__}, {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{datetime.date.today()}, allocator tuning {'on' if tuned else 'off'}; one call on ({edges}, {CHANNELS}) float32 = "
        f"{edges * CHANNELS:,} values (a 128-perovskite batch's edges x channels), median ms"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        ms = {
            "sigmoid": timed(lambda: torch.sigmoid(values, out=out), args.repeats),
            "softplus": timed(lambda: F.softplus(values), args.repeats),
            "softplus as relu(x) + log1p(exp(-|x|))": timed(softplus_by_parts, args.repeats),
            "exp": timed(lambda: torch.exp(values, out=out), args.repeats),
            "log": timed(lambda: torch.log(values.abs(), out=out), args.repeats),
            "log1p": timed(lambda: torch.log1p(values.abs(), out=out), args.repeats),
            "tanh": timed(lambda: torch.tanh(values, out=out), args.repeats),
            "mul": timed(lambda: torch.mul(values, values, out=out), args.repeats),
            "edge map, banded embedding_bag (half)": timed(
                lambda: _edge_linear(table_i, table_j, w_u, banded), args.repeats
            ),
            "edge map, dense gathers + addmm (half)": timed(dense_edge_map, args.repeats),
        }
        matmul_ms = timed(lambda: square @ square, max(args.repeats // 10, 5))
        gate = CONVOLUTIONS * (2 * ms["sigmoid"] + ms["softplus"])
        edge_maps = CONVOLUTIONS * 2 * ms["edge map, banded embedding_bag (half)"]
        print(
            f"\n{threads} thread(s); float32 1024² product {2 * 1024**3 / matmul_ms / 1e6:.0f} GFLOP/s"
        )
        for name, value in ms.items():
            print(f"  {name:40s} {value:7.3f}")
        print(
            f"  per step, {CONVOLUTIONS} convolutions: gate functions (2 sigmoid + 1 softplus each) "
            f"{gate:.2f} ms, forward edge maps {edge_maps:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
