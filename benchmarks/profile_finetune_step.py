"""Where a CPU fine-tuning step goes: the operators of forward, backward and Adam, timed.

Issue 12 asks for the paper's perovskites epoch (119 steps of 128 five-atom crystals plus the
validation forward) in 1.2 s on 2 CPU cores; it takes ~2.3 s, and the model steps alone ~1.9 s.
This script takes the steps apart: it trains the fine-tuning model (CGCNN encoder + head, MSE,
fused Adam, the fused convolution kernel: what ``finetune`` runs on a CPU) on batches gathered
beforehand, then profiles ``--steps`` steps with ``torch.profiler`` and prints

* the wall time per step (median of the profiled steps, and without the profiler);
* the operators by self CPU time per step, the fused kernel's forward and backward named
  (``FusedGatedConvolution``), with their share of the step;
* the step's arithmetic (multiply-adds of the linear maps and the per-edge work) and the bytes the
  kernel keeps for its backward, against this machine's measured float32 matrix-product rate and
  memory copy bandwidth: how far the step is from what the hardware allows.

Run (nothing else heavy on the machine)::

    python benchmarks/profile_finetune_step.py --data-root ../shared/data [--threads 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import add_data_arguments  # noqa: E402
from bench_finetune_epoch import subset_csv  # noqa: E402

from crystaltwins.data.cache import GraphCache, build_graph_cache  # noqa: E402
from crystaltwins.data.dataset import CrystalGraphDataset  # noqa: E402
from crystaltwins.graph.atom_features import AtomFeaturizer  # noqa: E402
from crystaltwins.models.heads import PropertyHead  # noqa: E402
from crystaltwins.training.common import adam, keep_freed_memory, new_encoder  # noqa: E402

BATCH = 128


def machine_rates(threads: int) -> tuple[float, float]:
    """(float32 GFLOP/s of a 1024² matrix product, GB/s of a 256 MB copy) on ``threads``."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    runs = []
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        runs.append(time.perf_counter() - start)
    gflops = 2 * 1024**3 / min(runs) / 1e9
    src = torch.ones(64 * 2**20)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        runs.append(time.perf_counter() - start)
    gbps = 2 * src.numel() * 4 / min(runs) / 1e9  # read + write
    return gflops, gbps


def step_arithmetic(
    batch, atom_fea_len: int, n_conv: int, n_features: int, bands: float
) -> tuple[float, float]:
    """(multiply-adds of one training step (forward + backward ≈ 3x forward), bytes the fused
    kernel stores per step for its backward and reads back); ``bands``: non-zero Gaussian
    features per edge."""
    n, e = int(batch.num_atoms), int(batch.num_edges)
    a = atom_fea_len
    forward = n * n_features * a  # embedding
    # per convolution: W_i h and W_j h per atom (2 x (A x 2A)); the sparse band features' map per
    # edge (bands x 2A); the gate and the sum per edge (a few per channel)
    forward += n_conv * (2 * n * a * 2 * a + e * bands * 2 * a + e * 4 * a)
    # the kernel keeps nothing per edge between forward and backward (it recomputes the edges:
    # the backward's edge work is about the forward's again), only per-atom sums (N, 4A) float32
    stored = n_conv * n * 4 * a * 4
    return 3 * forward, 2 * stored


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--crystals", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = keep_freed_memory()  # as training does (off with CRYSTALTWINS_TUNE_MALLOC=0)
    torch.manual_seed(0)
    featurizer = AtomFeaturizer.builtin()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.data_root) / "perovskites.csv.gz"
        subset = subset_csv(source, "e_form", args.crystals, Path(tmp) / "perovskites.csv.gz")
        build_graph_cache(subset, Path(tmp) / "cache", progress=False, workers=1)
        cache = GraphCache(Path(tmp) / "cache")
        encoder = new_encoder(featurizer, cache.settings)
        head = PropertyHead(encoder.out_dim, encoder.out_dim, 1)
        optimizer = adam([*encoder.parameters(), *head.parameters()], 1e-3)
        data = CrystalGraphDataset(cache, None, ["y"])
        batches = [
            data.__getitems__(list(range(k, k + BATCH)))
            for k in range(0, len(data) - BATCH + 1, BATCH)
        ]

        def step(batch) -> None:
            loss = nn.functional.mse_loss(head(encoder(batch))[:, 0], batch.targets[:, 0])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        encoder.train(), head.train()
        plain = []
        for batch in itertools.islice(itertools.cycle(batches), 5 + args.steps):
            start = time.perf_counter()
            step(batch)
            plain.append(time.perf_counter() - start)
        plain_ms = 1e3 * statistics.median(plain[5:])
        chosen = list(itertools.islice(itertools.cycle(batches), args.steps))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for batch in chosen:
                step(batch)
        events = prof.key_averages()
        total_self = sum(ev.self_cpu_time_total for ev in events) / args.steps / 1e3

        gflops, gbps = machine_rates(args.threads)
        gaussians = encoder.gaussian(batches[0].edge_distance)  # (E, 41)
        bands = float((gaussians > 0).sum(dim=1).float().mean())
        macs, moved = step_arithmetic(
            batches[0],
            encoder.config["atom_fea_len"],
            encoder.config["n_conv"],
            featurizer.table.shape[1],
            bands,
        )
        print(
            f"torch {torch.__version__}, {args.threads} threads, batch {BATCH} perovskites "
            f"({int(batches[0].num_atoms)} atoms, {int(batches[0].num_edges)} edges), "
            f"{time.strftime('%Y-%m-%d')}, allocator tuning {'on' if tuned else 'off'}"
        )
        print(f"step (forward, backward, Adam), no profiler: {plain_ms:.1f} ms (median)")
        print(f"operators' self CPU time under the profiler: {total_self:.1f} ms per step")
        print("| operator | ms per step | share |")
        print("|---|---|---|")
        for ev in sorted(events, key=lambda ev: -ev.self_cpu_time_total)[:15]:
            ms = ev.self_cpu_time_total / args.steps / 1e3
            print(f"| `{ev.key}` | {ms:.2f} | {100 * ms / total_self:.0f}% |")
        print(
            f"machine: {gflops:.0f} GFLOP/s (float32 1024² matrix product), {gbps:.1f} GB/s "
            "(256 MB copy, read + write)"
        )
        print(
            f"{bands:.1f} non-zero Gaussians per edge; step arithmetic ≈ {2 * macs / 1e9:.2f} GFLOP → {2 * macs / gflops / 1e6:.2f} ms at "
            f"that rate; kernel's stored tensors written + read ≈ {moved / 1e6:.0f} MB → "
            f"{moved / gbps / 1e6:.2f} ms at that bandwidth"
        )


if __name__ == "__main__":
    main()
