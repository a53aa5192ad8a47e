"""Data-layer speed: the reference CGCNN ``CIFData.__getitem__`` vs our cache build, graph step,
batch reads and worker scaling (issue 2). One core unless stated; same crystals for both.

    python benchmarks/bench_data.py --data-root ../shared/data [--n 300]

Prints a table; paste it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

csv.field_size_limit(2**31 - 1)
warnings.filterwarnings("ignore")


# --- The reference, as in CGCNN's data.py / Crystal Twins' dataset code -------------------------
class GaussianDistance:
    def __init__(self, dmin: float, dmax: float, step: float, var: float | None = None) -> None:
        self.filter = np.arange(dmin, dmax + step, step)
        self.var = var if var is not None else step

    def expand(self, distances: np.ndarray) -> np.ndarray:
        return np.exp(-((distances[..., np.newaxis] - self.filter) ** 2) / self.var**2)


class ReferenceCIFData:
    """CGCNN ``CIFData.__getitem__`` on CIF text: parse, get_all_neighbors, sort, pad, expand."""

    def __init__(
        self, atom_init: dict[int, np.ndarray], max_num_nbr: int = 12, radius: float = 8.0
    ) -> None:
        self.atom_init = atom_init
        self.max_num_nbr = max_num_nbr
        self.radius = radius
        self.gdf = GaussianDistance(0.0, radius, 0.2)

    def parse(self, cif: str):
        from pymatgen.core import Structure

        return Structure.from_str(cif, fmt="cif")

    def graph(self, crystal):
        atom_fea = np.vstack(
            [self.atom_init[crystal[i].specie.number] for i in range(len(crystal))]
        )
        atom_fea = torch.Tensor(atom_fea)
        all_nbrs = crystal.get_all_neighbors(self.radius, include_index=True)
        all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in all_nbrs]
        nbr_fea_idx, nbr_fea = [], []
        for nbr in all_nbrs:
            if len(nbr) < self.max_num_nbr:
                nbr_fea_idx.append(
                    list(map(lambda x: x[2], nbr)) + [0] * (self.max_num_nbr - len(nbr))
                )
                nbr_fea.append(
                    list(map(lambda x: x[1], nbr))
                    + [self.radius + 1.0] * (self.max_num_nbr - len(nbr))
                )
            else:
                nbr_fea_idx.append(list(map(lambda x: x[2], nbr[: self.max_num_nbr])))
                nbr_fea.append(list(map(lambda x: x[1], nbr[: self.max_num_nbr])))
        nbr_fea_idx, nbr_fea = np.array(nbr_fea_idx), np.array(nbr_fea)
        nbr_fea = self.gdf.expand(nbr_fea)
        return atom_fea, torch.Tensor(nbr_fea), torch.LongTensor(nbr_fea_idx)

    def __call__(self, cif: str):
        return self.graph(self.parse(cif))


# --- Helpers ---------------------------------------------------------------------------------------
def read_rows(path: Path, n: int) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as handle:
        return list(itertools.islice(csv.DictReader(handle), n))


def write_subset(rows: list[dict[str, str]], path: Path) -> Path:
    with gzip.open(path, "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def reference_features(reference_dir: str | Path) -> tuple[Any, dict[int, np.ndarray]]:
    """Our featurizer and the reference's {Z: features} dict, both from the published atom_init.json."""
    from crystaltwins.graph.atom_features import AtomFeaturizer

    path = Path(reference_dir) / "atom_init.json"
    table = json.loads(path.read_text())
    return AtomFeaturizer.from_json(path), {
        int(k): np.array(v, dtype=float) for k, v in table.items()
    }


def rate(fn, items, repeat: int = 1) -> float:
    """Items per second (best of ``repeat``)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-root`` and ``--reference`` (defaults: the environment variables, then ../shared)."""
    parser.add_argument(
        "--data-root", default=os.environ.get("CRYSTALTWINS_DATA", "../shared/data")
    )
    parser.add_argument(
        "--reference",
        default=os.environ.get("CRYSTALTWINS_REFERENCE", "../shared/reference/crystal_twins"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_data_arguments(parser)
    parser.add_argument("--n", type=int, default=300, help="crystals per dataset")
    parser.add_argument(
        "--scaling-n", type=int, default=4000, help="crystals for the worker-scaling run"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    from crystaltwins.data.cache import GraphCache, build_graph_cache
    from crystaltwins.data.dataset import CrystalGraphDataset, collate_graphs
    from crystaltwins.graph.crystal_graph import build_crystal_graph
    from crystaltwins.io.cif import parse_cif_fast

    data_root = Path(args.data_root)
    featurizer, atom_init = reference_features(args.reference)
    reference = ReferenceCIFData(atom_init)
    print(
        f"# bench_data: {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, one core unless stated, n={args.n} crystals per dataset\n"
    )
    print(
        "| dataset | atoms/crystal | reference CIFData (crystals/s) | our cache build (crystals/s) | ratio | "
        "reference graph step (crystals/s) | our graph step (crystals/s) | ratio | pymatgen parse (ms) | our parse (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    tmp = Path(tempfile.mkdtemp(prefix="ct-bench-"))
    caches = {}
    for name in ("perovskites", "mp36k", "hoip"):
        rows = read_rows(data_root / f"{name}.csv.gz", args.n)
        cifs = [r["cif"] for r in rows]
        ref_rate = rate(reference, cifs)
        structures = [reference.parse(c) for c in cifs]
        ref_graph_rate = rate(reference.graph, structures)
        ours_graph_rate = rate(build_crystal_graph, structures, repeat=3)
        pmg_parse = 1e3 / rate(reference.parse, cifs)
        our_parse = 1e3 / rate(parse_cif_fast, cifs, repeat=3)
        source = write_subset(rows, tmp / f"{name}.csv.gz")
        start = time.perf_counter()
        build_graph_cache(
            source,
            tmp / f"cache-{name}",
            featurizer=featurizer,
            workers=1,
            progress=False,
            force=True,
        )
        build_rate = len(rows) / (time.perf_counter() - start)
        caches[name] = tmp / f"cache-{name}"
        atoms = np.mean([len(s) for s in structures])
        print(
            f"| {name} | {atoms:.1f} | {ref_rate:.0f} | {build_rate:.0f} | {build_rate / ref_rate:.1f}x | "
            f"{ref_graph_rate:.0f} | {ours_graph_rate:.0f} | {ours_graph_rate / ref_graph_rate:.1f}x | {pmg_parse:.2f} | {our_parse:.3f} |"
        )

    # Batch reads: 64 random cached mp36k graphs -> ready tensors.
    dataset = CrystalGraphDataset(GraphCache(caches["mp36k"]))
    rng = np.random.default_rng(0)
    times = []
    for _ in range(200):
        idx = rng.choice(len(dataset), min(64, len(dataset)), replace=False)
        start = time.perf_counter()
        collate_graphs([dataset[int(i)] for i in idx])
        times.append(time.perf_counter() - start)
    print(
        f"\nbatch of 64 cached mp36k graphs -> tensors: median {1e3 * np.median(times):.2f} ms (target < 2 ms)"
    )

    # Worker scaling on the 2 cores.
    rows = read_rows(data_root / "mp36k.csv.gz", args.scaling_n)
    source = write_subset(rows, tmp / "scaling.csv.gz")
    rates = {}
    for workers in (1, 2):
        start = time.perf_counter()
        build_graph_cache(
            source,
            tmp / f"scaling-{workers}",
            featurizer=featurizer,
            workers=workers,
            progress=False,
            force=True,
        )
        rates[workers] = len(rows) / (time.perf_counter() - start)
    print(
        f"cache build, {args.scaling_n} mp36k crystals: 1 worker {rates[1]:.0f}/s, 2 workers {rates[2]:.0f}/s "
        f"(speed-up {rates[2] / rates[1]:.2f}x)"
    )


if __name__ == "__main__":
    main()
