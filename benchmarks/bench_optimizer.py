"""One Adam step over a fine-tuning model's parameters: ``foreach`` vs ``fused`` (issue 12).

The parameters are those of the default fine-tuning model (CGCNN encoder + property head, 26
tensors, ~97k values) with random gradients; both optimisers take ``--steps`` steps per round, in
``--rounds`` rounds alternating which goes first; medians of the per-round times. Training uses
:func:`crystaltwins.training.common.adam` (fused where the device has it). Run::

    python benchmarks/bench_optimizer.py [--threads 2] [--steps 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.heads import PropertyHead


def step_ms(optimizer: torch.optim.Optimizer, steps: int) -> float:
    """Milliseconds per ``optimizer.step()`` over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table = torch.rand(101, 92)
    table[0] = 0  # row 0: the masked atom
    encoder = CGCNNEncoder(table)
    head = PropertyHead(encoder.out_dim, encoder.out_dim, 1)
    params = [*encoder.parameters(), *head.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {
        "foreach": torch.optim.Adam(params, 1e-3, foreach=True),
        "fused": torch.optim.Adam(params, 1e-3, fused=True),
    }
    for optimizer in optimizers.values():
        step_ms(optimizer, 20)  # state allocated, caches warm
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for round_ in range(args.rounds):
        order = list(optimizers) if round_ % 2 == 0 else list(reversed(optimizers))
        for name in order:
            times[name].append(step_ms(optimizers[name], args.steps))
    print(
        f"torch {torch.__version__}, {args.threads} threads, {len(params)} tensors, "
        f"{sum(p.numel() for p in params):,} values, {time.strftime('%Y-%m-%d')}"
    )
    for name, values in times.items():
        print(f"{name:8s} {statistics.median(values):.3f} ms/step (rounds: "
              + ", ".join(f"{v:.3f}" for v in values) + ")")  # fmt: skip


if __name__ == "__main__":
    main()
