"""Linear probe: how much property information do the frozen crystal embeddings of an encoder hold?

For every task and seed, the bench's split (60/20/20, seeded) capped as in ``--preset cpu`` (at most
1,000 training, validation and test crystals); ridge regression on the standardised frozen
embeddings, its strength chosen on the validation MAE, the test MAE reported. A randomly initialised
encoder is the floor: pre-training helps only where it beats that. Run::

    python benchmarks/linear_probe.py --data-root ../shared/data \\
        --atom-init ../shared/reference/crystal_twins/atom_init.json \\
        --encoder ct_12k=runs/bench-cpu/pretrain/rp_am_em/model.pt --encoder shipped=crystal-twins \\
        --encoder published=../shared/reference/crystal_twins/CGCNNBarlow_model.pth
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from crystaltwins.data.splits import cap_split, random_split
from crystaltwins.evaluation.inference import embed
from crystaltwins.evaluation.tasks import PAPER_TASKS, TASKS
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.checkpoint import ModelBundle, load_model
from crystaltwins.training.finetune import TRANSFORMS

ALPHAS = 10.0 ** np.arange(-4, 4.5, 0.5)


def ridge_test_mae(x: np.ndarray, y: np.ndarray, train, val, test) -> tuple[float, float]:
    """Ridge on standardised features, strength chosen on validation MAE: (val MAE, test MAE)."""
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
    z = (x - mean) / std
    z = np.hstack([z, np.ones((len(z), 1))])
    y_mean = y[train].mean()
    gram = z[train].T @ z[train]
    rhs = z[train].T @ (y[train] - y_mean)
    best = (np.inf, np.inf)
    for alpha in ALPHAS:
        w = np.linalg.solve(gram + alpha * len(train) * np.eye(len(gram)), rhs)
        pred = z @ w + y_mean
        val_mae = float(np.abs(pred[val] - y[val]).mean())
        if val_mae < best[0]:
            best = (val_mae, float(np.abs(pred[test] - y[test]).mean()))
    return best


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def effective_rank(x: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred ``(N, H)`` embeddings: how
    many directions they really use (H when all are used equally, 1 when collapsed to a line)."""
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--atom-init", required=True, help="element features of the random encoder")
    parser.add_argument("--encoder", action="append", default=[], help="NAME=MODEL (repeatable)")
    parser.add_argument("--tasks", nargs="+", default=PAPER_TASKS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--max-eval", type=int, default=1000)
    args = parser.parse_args()

    featurizer = AtomFeaturizer.from_json(args.atom_init)
    torch.manual_seed(0)
    random_encoder = CGCNNEncoder(torch.tensor(featurizer.table))
    encoders: dict[str, ModelBundle] = {
        "random init": ModelBundle(
            random_encoder, None, "pretrained", featurizer, GraphSettings(), {}
        )
    }
    for spec in args.encoder:
        name, _, path = spec.partition("=")
        encoders[name] = load_model(path)

    tasks = [TASKS[t] for t in args.tasks if TASKS[t].available]
    results: dict[str, dict[str, list[float]]] = {name: {} for name in encoders}
    ranks: dict[str, dict[str, float]] = {name: {} for name in encoders}
    started = time.time()
    for name, bundle in encoders.items():
        embedded: dict[str, object] = {}
        for task in tasks:
            if task.file not in embedded:
                embedded[task.file] = embed(bundle, f"{args.data_root}/{task.file}")
            result = embedded[task.file]
            raw = result.labels[task.target]
            forward, _, valid = TRANSFORMS[task.transform]
            keep = np.flatnonzero(valid(raw))
            x, y = result.values[keep].astype(np.float64), forward(raw[keep]).astype(np.float64)
            ranks[name][task.name] = effective_rank(x)
            for seed in range(args.seeds):
                split = cap_split(
                    random_split(len(keep), (0.6, 0.2, 0.2), seed),
                    seed,
                    args.max_train,
                    args.max_eval,
                )
                _, test_mae = ridge_test_mae(x, y, split.train, split.val, split.test)
                results[name].setdefault(task.name, []).append(test_mae)
    print(
        f"linear probe (ridge on frozen embeddings; ≤{args.max_train} train, ≤{args.max_eval} "
        f"val/test; {args.seeds} seeds; {time.time() - started:.0f} s); test MAE mean ± std"
    )
    names = list(encoders)
    print("\n| task | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for task in tasks:
        cells = [
            f"{np.mean(results[n][task.name]):.4f} ± {_std(results[n][task.name]):.4f}"
            for n in names
        ]
        print(f"| {task.name} ({task.unit}) | " + " | ".join(cells) + " |")
    print("\neffective rank of the embeddings (all crystals of the task's file)")
    print("\n| task | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for task in tasks:
        print(f"| {task.name} | " + " | ".join(f"{ranks[n][task.name]:.1f}" for n in names) + " |")


if __name__ == "__main__":
    main()
