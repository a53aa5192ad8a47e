"""Pre-training data side (issue 3): augmented view pairs per second, reference vs ours; the
data side against the model's own step; the wall time of one epoch over the whole corpus.

* reference: the Crystal Twins dataset ``__getitem__``, written out below: parse the CIF, then
  for each of two views perturb a copy (pymatgen ``Structure.perturb(0.05)``), rebuild the CGCNN
  graph (``get_all_neighbors``, sort, pad to 12, Gaussian expansion), mask 10% of the atoms'
  features and 10% of the edges.
* ours: :class:`TwoViewDataset` over the graph cache with RP+AM+EM (exact re-selection from cached
  candidates), then collation into batches.

    python benchmarks/bench_pretrain_data.py --data-root ../shared/data [--n 200]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from bench_data import (  # noqa: E402
    ReferenceCIFData,
    add_data_arguments,
    read_rows,
    reference_features,
    write_subset,
)


class ReferenceCTViews(ReferenceCIFData):
    """Crystal Twins ``__getitem__``: two augmented views rebuilt from the CIF."""

    def view(self, structure, rng: np.random.Generator):
        perturbed = structure.copy()
        perturbed.perturb(0.05)
        atom_fea, nbr_fea, nbr_idx = self.graph(perturbed)
        n = atom_fea.shape[0]
        masked = rng.choice(n, max(1, math.floor(0.1 * n)), replace=False)
        atom_fea[masked] = 0
        edges = nbr_fea.shape[0] * nbr_fea.shape[1]
        drop = rng.choice(edges, max(1, math.floor(0.1 * edges)), replace=False)
        nbr_fea.view(edges, -1)[drop] = 0
        return atom_fea, nbr_fea, nbr_idx

    def pair(self, cif: str, rng: np.random.Generator):
        structure = self.parse(cif)
        return self.view(structure, rng), self.view(structure, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_data_arguments(parser)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument(
        "--corpus-sample",
        type=int,
        default=1536,
        help="crystals sampled from the corpus for the epoch estimate",
    )
    parser.add_argument("--skip-epoch", action="store_true")
    args = parser.parse_args()

    from crystaltwins.data.cache import GraphCache, build_graph_cache
    from crystaltwins.data.dataset import (
        AugmentedPairCollator,
        CrystalGraphDataset,
        KeyedDataset,
        TwoViewDataset,
        ViewPairCollator,
    )
    from crystaltwins.data.sources import prepare_caches
    from crystaltwins.losses import BarlowTwinsLoss
    from crystaltwins.models import CGCNNEncoder, ProjectionHead
    from crystaltwins.training.sampling import EpochSampler
    from crystaltwins.transforms import build_augmentation

    torch.set_num_threads(1)
    data_root = Path(args.data_root)
    featurizer, atom_init = reference_features(args.reference)
    reference = ReferenceCTViews(atom_init)
    augment = build_augmentation("rp,am,em")
    tmp = Path(tempfile.mkdtemp(prefix="ct-bench-"))
    print(
        f"# bench_pretrain_data: {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores\n"
    )
    print(
        "| dataset | reference CT __getitem__ (view pairs/s) | ours, per crystal (pairs/s) | ratio "
        "| ours, whole batch at once (pairs/s) | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for name in ("perovskites", "hoip"):
        rows = read_rows(data_root / f"{name}.csv.gz", args.n)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for r in rows:
            reference.pair(r["cif"], rng)
        ref_rate = len(rows) / (time.perf_counter() - start)
        source = write_subset(rows, tmp / f"{name}.csv.gz")
        build_graph_cache(source, tmp / f"cache-{name}", featurizer=featurizer, progress=False)
        graphs = CrystalGraphDataset(GraphCache(tmp / f"cache-{name}"))
        views = TwoViewDataset(graphs, augment, seed=0)
        keyed = KeyedDataset(graphs)
        per_crystal, batched = ViewPairCollator(), AugmentedPairCollator(augment)
        best = {"crystal": float("inf"), "batch": float("inf")}
        for repeat in range(3):
            for kind in best:
                start = time.perf_counter()
                for k in range(0, len(views), 64):
                    keys = [(i, repeat) for i in range(k, min(k + 64, len(views)))]
                    if kind == "crystal":
                        per_crystal([views[key] for key in keys])
                    else:
                        batched([keyed[key] for key in keys])
                best[kind] = min(best[kind], time.perf_counter() - start)
        one, whole = len(views) / best["crystal"], len(views) / best["batch"]
        print(
            f"| {name} | {ref_rate:.0f} | {one:.0f} | {one / ref_rate:.0f}x | {whole:.0f} | {whole / ref_rate:.0f}x |"
        )

    if args.skip_epoch:
        return
    # The data side vs the model on 2 cores, on a random sample of the whole corpus.
    torch.set_num_threads(2)
    corpus = sorted(data_root.glob("*.csv.gz"))
    caches = prepare_caches(corpus, featurizer=featurizer, workers=2, progress=False, log=None)
    sizes = [len(c) for c in caches]
    total = sum(sizes)
    full = torch.utils.data.ConcatDataset([CrystalGraphDataset(c) for c in caches])
    sample = np.sort(np.random.default_rng(0).choice(total, args.corpus_sample, replace=False))
    views = KeyedDataset(torch.utils.data.Subset(full, sample.tolist()))
    encoder = CGCNNEncoder(torch.tensor(featurizer.table))
    projector = ProjectionHead(128, 128, 256)
    loss_fn = BarlowTwinsLoss()
    params = list(encoder.parameters()) + list(projector.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-5)

    def step(a, b):
        optimizer.zero_grad()
        loss = loss_fn(projector(encoder(a)), projector(encoder(b)))
        loss.backward()
        optimizer.step()

    def loader(workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            views,
            batch_size=64,
            sampler=EpochSampler(len(views), seed=0),
            collate_fn=AugmentedPairCollator(augment),
            num_workers=workers,
            prefetch_factor=4 if workers else None,
        )

    batches = list(loader(0))  # also warms the page cache
    start = time.perf_counter()
    for a, b in batches:
        step(a, b)
    model_time = time.perf_counter() - start
    epoch_times = {}
    for workers in (0, 1):  # real epochs: views made in the main process, or in one worker
        start = time.perf_counter()
        for a, b in loader(workers):
            step(a, b)
        epoch_times[workers] = time.perf_counter() - start
    epoch_time = min(epoch_times.values())
    print(
        f"\ncorpus: {len(corpus)} files, {total} crystals; sample of {len(sample)} random crystals, batch 64, 2 threads"
    )
    print(f"model forward+backward+Adam alone: {model_time:.1f} s")
    for workers, seconds in epoch_times.items():
        print(
            f"epoch with data loading, {workers} loader workers: {seconds:.1f} s "
            f"(overhead {100 * (seconds / model_time - 1):+.0f}%, target within 20%)"
        )
    print(
        f"estimated CPU epoch over the whole corpus ({total} crystals): {epoch_time * total / len(sample) / 60:.0f} min"
    )


if __name__ == "__main__":
    main()
