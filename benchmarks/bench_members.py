"""K fine-tuning members trained together (one loop, stacked weights) vs one after another.

Both sides train the same K members (own seeds and splits, from scratch, ``--encoder`` CGCNN by default, batch 128) on the
same crystals for ``--epochs`` epochs and report the median epoch time (training + validation of
all K members) after the first epoch:

* ``sequential``: K single-model loops (``FinetuneModule``'s step, ``torch.optim.Adam``, batches
  gathered by array arithmetic; on CPU the fused convolution kernel), one member after another;
* ``together``: :func:`crystaltwins.training.members.train_together` (one step for all K).

Both are plain loops without Lightning, so the ratio is that of the model steps. Run::

    python benchmarks/bench_members.py --data-root ../shared/data --crystals 2000 --members 3 \\
        [--threads 2] [--accelerator gpu]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.data.dataset import CrystalGraphDataset
from crystaltwins.data.splits import random_split
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.models.heads import PropertyHead
from crystaltwins.models.property_model import PropertyModel, Target
from crystaltwins.training.common import new_encoder
from crystaltwins.training.finetune import FinetuneModule
from crystaltwins.training.members import MemberData, _batches, train_together

BATCH = 128


class _Targets(CrystalGraphDataset):
    def __init__(self, cache: GraphCache, indices: np.ndarray, values: np.ndarray) -> None:
        super().__init__(cache, indices)
        self.values = values

    def target_values(self) -> np.ndarray:
        return self.values


def make_members(
    cache: GraphCache, k: int, device: torch.device, encoder_name: str = "cgcnn"
) -> list[MemberData]:
    values = cache.labels(["y"])[:, 0].astype(np.float64)
    featurizer = AtomFeaturizer.builtin()
    members = []
    for seed in range(k):
        split = random_split(len(cache), (0.6, 0.2, 0.2), seed=seed)
        L.seed_everything(seed, verbose=False)
        encoder = new_encoder(featurizer, cache.settings, name=encoder_name)
        y = values[split.train]
        target = Target("y", mean=float(y.mean()), std=float(y.std()))
        head = PropertyHead(encoder.out_dim, encoder.out_dim, 1)
        module = FinetuneModule(PropertyModel(encoder, head, target))
        train, val = _Targets(cache, split.train, values), _Targets(cache, split.val, values)
        if device.type == "cuda":
            train, val = train.to_device(device), val.to_device(device)
        members.append(MemberData(module, train, val, seed))
    return members


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sequential_epochs(members: list[MemberData], epochs: int, device: torch.device) -> list[float]:
    modules = [m.module.to(device) for m in members]
    optimizers = [m.configure_optimizers() for m in modules]
    times = []
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        for member, module, optimizer in zip(members, modules, optimizers, strict=True):
            module.train()
            for positions in _batches(len(member.train), BATCH, member.seed, epoch, True):
                batch = member.train.__getitems__(positions).to(device)
                loss = module._step(batch, "train")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            module.eval()
            with torch.no_grad():
                for positions in _batches(len(member.val), BATCH, 0, 0, False):
                    module._step(member.val.__getitems__(positions).to(device), "val")
            for stage in ("train", "val"):  # the epoch's read-back, as the trainer logs it
                module.epoch_metrics._sums.pop(stage).tolist()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def together_epochs(members: list[MemberData], epochs: int, device: torch.device) -> list[float]:
    marks = [time.perf_counter()]

    def mark(epoch, results) -> None:
        sync(device)
        marks.append(time.perf_counter())

    train_together(members, epochs, BATCH, device, on_epoch=mark)
    return np.diff(marks).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--file", default="perovskites")
    parser.add_argument("--column", default="e_form")
    parser.add_argument("--crystals", type=int, default=2000, help="0: the whole file")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument(
        "--encoder", choices=("cgcnn", "gin", "gatgnn", "ogcnn"), default="cgcnn",
        help="the members' architecture (default cgcnn)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--repeat", type=int, default=2, help="alternate the two this often")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {name}, {args.threads} threads, {args.members} "
        f"{args.encoder} members, "
        f"batch {BATCH}, {args.epochs} epochs, {time.strftime('%Y-%m-%d')}"
    )
    csv.field_size_limit(2**31 - 1)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "data.csv.gz"
        with (
            gzip.open(Path(args.data_root) / f"{args.file}.csv.gz", "rt", newline="") as src,
            gzip.open(source, "wt", newline="") as dst,
        ):
            writer = csv.writer(dst)
            writer.writerow(["id", "cif", "y"])
            rows = csv.DictReader(src)
            for row in itertools.islice(rows, args.crystals or None):
                writer.writerow([row["id"], row["cif"], row[args.column]])
        build_graph_cache(
            source, Path(tmp) / "cache", featurizer=AtomFeaturizer.builtin(), progress=False,
            workers=max(1, args.threads),
        )  # fmt: skip
        cache = GraphCache(Path(tmp) / "cache")
        print(f"{args.file}: {len(cache)} crystals, per member 60% train / 20% val")
        results: dict[str, list[float]] = {"sequential": [], "together": []}
        for _ in range(args.repeat):  # alternate: the machine's load drifts
            for label, run in (("sequential", sequential_epochs), ("together", together_epochs)):
                members = make_members(cache, args.members, device, args.encoder)
                times = run(members, args.epochs, device)
                results[label] += times[1:]
                print(f"  {label:10s} epochs: {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
        seq = statistics.median(results["sequential"])
        tog = statistics.median(results["together"])
        print(
            f"{args.members} members, median epoch (all members): sequential {seq:.3f} s, "
            f"together {tog:.3f} s, together/sequential {tog / seq:.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
