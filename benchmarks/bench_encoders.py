"""Training-step time per crystal of each encoder (CGCNN, GIN, GATGNN, OGCNN) on real crystals.

Step = a batch of ``--batch`` crystals → encoder + :class:`~crystaltwins.models.PropertyHead`
→ L1 loss → backward → Adam step, over the first ``--crystals`` perovskites (graph cache built
first, not timed), on the CPU. Rounds go over the encoders in turn (one epoch over the crystals
each), so that a change of machine load affects all alike; the median epoch is reported, per
crystal and as a ratio to CGCNN. Also timed: the OGCNN's per-batch OFM features alone, and the
GIN written edge by edge as published (:meth:`GINEncoder.plain_layer`) and GATGNN's layer
with the published concatenation ``[x ‖ e] W`` per edge. Run::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_encoders.py [--crystals 512]

Needs ``$CRYSTALTWINS_DATA/perovskites.csv.gz`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.data.gather import GraphStore
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.layers.graph_ops import segment_softmax, segment_sum
from crystaltwins.models import CGCNNEncoder, PropertyHead, PropertyModel
from crystaltwins.models.gatgnn import AugmentedGraphAttention, GATGNNEncoder
from crystaltwins.models.gin import GINEncoder
from crystaltwins.models.ogcnn import OGCNNEncoder


class PlainGIN(GINEncoder):
    """The GIN with its layers written edge by edge (the published formulation)."""

    def atom_embeddings(self, batch):  # type: ignore[override]
        x = self.embedding(self.atom_features)[batch.atomic_numbers]
        edge_fea = self.gaussian(batch.edge_distance)
        for layer in range(len(self.mlps)):
            x = self.plain_layer(layer, x, edge_fea, batch.edge_index)
        return x


class PublishedAGAT(AugmentedGraphAttention):
    """GATGNN's layer as published: ``[x ‖ e] W`` on concatenated per-edge inputs."""

    def forward(self, x, edge_embedding, edge_index):  # type: ignore[override]
        centre, neighbour = edge_index
        h, f = self.heads, self.out_features
        x_i = F.softplus(torch.cat([x[centre], edge_embedding], -1) @ self.W).view(-1, h, f)
        x_j = F.softplus(torch.cat([x[neighbour], edge_embedding], -1) @ self.W).view(-1, h, f)
        alpha = F.softplus((torch.cat([x_i, x_j], dim=-1) * self.att).sum(dim=-1))
        alpha = segment_softmax(F.softplus(self.bn1(alpha)), centre, x.shape[0])
        summed = segment_sum(x_j * alpha.unsqueeze(-1), centre, x.shape[0])
        return summed.mean(dim=1) + self.bias


def published_gatgnn(table: torch.Tensor) -> GATGNNEncoder:
    encoder = GATGNNEncoder(table)
    for layer in encoder.node_att:
        layer.__class__ = PublishedAGAT
    return encoder


ENCODERS: dict[str, Callable[[torch.Tensor], torch.nn.Module]] = {
    "cgcnn": CGCNNEncoder,
    "gin": GINEncoder,
    "gin (edge by edge)": PlainGIN,
    "gatgnn": GATGNNEncoder,
    "gatgnn (published)": published_gatgnn,
    "ogcnn": OGCNNEncoder,
}


def perovskite_store(count: int, workdir: Path) -> tuple[GraphStore, torch.Tensor]:
    data = Path(os.environ.get("CRYSTALTWINS_DATA", Path(__file__).parents[2] / "shared" / "data"))
    csv.field_size_limit(2**31 - 1)
    subset = workdir / f"perovskites_{count}.csv.gz"
    with (
        gzip.open(data / "perovskites.csv.gz", "rt", newline="") as src,
        gzip.open(subset, "wt", newline="") as dst,
    ):
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), count + 1))
    featurizer = AtomFeaturizer.builtin()
    build_graph_cache(
        subset, workdir / "cache", featurizer=featurizer, targets=["e_form"], progress=False
    )
    cache = GraphCache(workdir / "cache")
    return GraphStore(cache, values=cache.labels(["e_form"])), torch.tensor(featurizer.table)


def epoch_seconds(model, optimiser, batches) -> float:
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = F.l1_loss(model(batch)[:, 0], batch.targets[:, 0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crystals", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store, table = perovskite_store(args.crystals, Path(tmp))
        order = np.random.default_rng(0).permutation(len(store))
        batches = [
            store.batch(c, with_ids=False) for c in np.array_split(order, len(order) // args.batch)
        ]
    n = sum(b.num_crystals for b in batches)
    atoms = sum(b.num_atoms for b in batches)
    edges = sum(b.num_edges for b in batches)
    print(
        f"{n} perovskites ({atoms} atoms, {edges} edges), {len(batches)} batches of ~{args.batch}, "
        f"threads {torch.get_num_threads()}"
    )
    runs = {}
    for name, cls in ENCODERS.items():
        torch.manual_seed(0)
        encoder = cls(table)
        model = PropertyModel(encoder, PropertyHead(encoder.out_dim))
        params = sum(p.numel() for p in model.parameters())
        runs[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), params)
    times: dict[str, list[float]] = {name: [] for name in runs}
    ofm_times = []
    ogcnn = runs["ogcnn"][0].encoder
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, (model, optimiser, _params) in runs.items():
            times[name].append(epoch_seconds(model, optimiser, batches))
        start = time.perf_counter()
        for batch in batches:
            ogcnn.ofm(batch)
        ofm_times.append(time.perf_counter() - start)
    reference = statistics.median(times["cgcnn"][1:])
    print(f"{'encoder':<20} {'params':>9} {'ms/crystal':>11} {'x CGCNN':>8}")
    for name, (_m, _o, params) in runs.items():
        seconds = statistics.median(times[name][1:])
        print(f"{name:<20} {params:>9} {1e3 * seconds / n:>11.3f} {seconds / reference:>8.2f}")
    ofm = statistics.median(ofm_times[1:])
    print(f"{'ogcnn OFM features':<20} {'':>9} {1e3 * ofm / n:>11.3f} {ofm / reference:>8.2f}")


if __name__ == "__main__":
    main()
