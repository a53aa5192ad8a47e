"""The fused CGConv kernel alone: forward + backward of one training-mode convolution.

One convolution's edge work on a perovskite-sized batch (640 atoms, 12 edges each, 64 atom
features, 41 Gaussians of which ~11 non-zero per edge), as
:class:`~crystaltwins.layers.fused_cgconv.FusedGatedConvolution` does it in training, against the
PyTorch implementation of the same function (``CGConv`` with the kernel switched off). Prints the
median and best of ``--repeats`` timed calls after a warm-up. To compare two versions of the
kernel, run the script with each one's sources first on the path::

    PYTHONPATH=<checkout>/src python benchmarks/bench_fused_kernel.py [--threads 1] [--repeats 300]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from crystaltwins.layers import CGConv, GaussianExpansion, fused_cgconv
from crystaltwins.layers.cgcnn_conv import EdgeGraph

ATOMS, EDGES_PER_ATOM, FEATURES = 640, 12, 64


def timed(call: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(median, best) milliseconds of ``call`` after 20 warm-up calls."""
    for _ in range(20):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    centre = torch.arange(ATOMS).repeat_interleave(EDGES_PER_ATOM)
    # neighbours within the same 5-atom crystal, as in a perovskite batch
    neighbour = (centre // 5) * 5 + torch.randint(0, 5, (centre.numel(),))
    distance = 1.0 + 7.0 * torch.rand(centre.numel())
    gaussian = GaussianExpansion()
    edge_fea = gaussian(distance)
    edge_index = torch.stack((centre, neighbour))
    graph = EdgeGraph(edge_fea, edge_index, ATOMS, edge_band=gaussian.banded(distance))
    conv = CGConv(FEATURES, edge_fea.shape[1]).train()
    atom_fea = torch.randn(ATOMS, FEATURES, requires_grad=True)
    grad = torch.randn(ATOMS, FEATURES)

    def step() -> None:
        conv(atom_fea, edge_fea, edge_index, graph).backward(grad)

    fused = None
    if fused_cgconv.available():
        # whether or not training here would take it (trees before the choice always do)
        with getattr(fused_cgconv, "forced", contextlib.nullcontext)():
            fused = timed(step, args.repeats)
    with fused_cgconv.disabled():
        plain = timed(step, args.repeats)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {ATOMS} atoms, "
        f"{centre.numel()} edges, {FEATURES} features; forward + backward of one convolution "
        f"(median / best, ms): fused kernel "
        + (f"{fused[0]:.2f} / {fused[1]:.2f}" if fused else "unavailable")
        + f", PyTorch operations {plain[0]:.2f} / {plain[1]:.2f}"
    )


if __name__ == "__main__":
    main()
