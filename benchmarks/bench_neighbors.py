"""Neighbour search speed: ``find_neighbors`` now vs two earlier versions, on the same crystals in one
process, interleaved, with the outputs checked.

- ``old`` (6f97722): one kernel call at ``radius + 2·margin``, its own tie rule (not the reference's
  order at ties), the speed to keep.
- ``exact`` (9f0d4fb): the reference order (kernel at ``radius``, stable sort of the whole sphere).
- ``new``: the working tree's :func:`crystaltwins.graph.neighbors.find_neighbors`.
- ``kernel``: pymatgen's ``find_points_in_spheres`` at ``radius`` alone, the floor of all three.

``new`` must equal ``exact`` bit for bit on every crystal (selected edges in order, distances,
images, candidates with their order); the script exits 1 otherwise. CIFs are parsed beforehand,
so the timings are the neighbour step alone (kernel + selection + candidates), one core.

    python benchmarks/bench_neighbors.py --data-root ../shared/data [--n 2000] [--repeats 5]

The earlier versions are read with ``git show REV:src/crystaltwins/graph/neighbors.py``, so run it
inside the repository. Prints a markdown table (medians over the repeats) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import itertools
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

csv.field_size_limit(2**31 - 1)
warnings.filterwarnings("ignore")

NEIGHBORS_PATH = "src/crystaltwins/graph/neighbors.py"
DATASETS = ("perovskites", "mp36k", "hoip")
FIELDS = ("src", "dst", "image", "distance")

Crystal = tuple[str, np.ndarray, np.ndarray]


def load_revision(rev: str, workdir: Path) -> ModuleType:
    """The module ``neighbors.py`` as of git revision ``rev``, imported under its own name."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "show", f"{rev}:{NEIGHBORS_PATH}"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = f"neighbors_{rev}"
    path = workdir / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_crystals(path: Path, count: int) -> tuple[list[Crystal], int]:
    """The first ``count`` rows parsed to (id, positions Å, lattice Å); and how many failed."""
    from crystaltwins.io.cif import parse_cif_fast

    crystals, failed = [], 0
    with gzip.open(path, "rt", newline="") as handle:
        for row in itertools.islice(csv.DictReader(handle), count):
            try:
                structure = parse_cif_fast(row["cif"])
            except Exception:  # noqa: BLE001 - a bad row is counted, not fatal
                failed += 1
                continue
            crystals.append(
                (
                    row["id"],
                    np.ascontiguousarray(structure.cart_coords, dtype=np.float64),
                    np.ascontiguousarray(structure.lattice.matrix, dtype=np.float64),
                )
            )
    return crystals, failed


def bit_equal(a, b) -> bool:
    """Same shape and bytes in every field of two ``NeighborList`` (image vectors compared as
    int64: 9f0d4fb stored them as int8, the code since as int16)."""
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        if field == "image":
            x, y = x.astype(np.int64), y.astype(np.int64)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def mismatches(new: Callable, exact: Callable, crystals: list[Crystal], settings) -> list[str]:
    """Ids of crystals whose selected edges or candidates differ between ``new`` and ``exact``."""
    bad = []
    for crystal_id, positions, lattice in crystals:
        ours = new(positions, lattice, *settings)
        theirs = exact(positions, lattice, *settings)
        if not (bit_equal(ours[0], theirs[0]) and bit_equal(ours[1], theirs[1])):
            bad.append(crystal_id)
    return bad


def time_pass(function: Callable, crystals: list[Crystal], settings) -> float:
    """Crystals per second of one pass over ``crystals``."""
    start = time.perf_counter()
    for _, positions, lattice in crystals:
        function(positions, lattice, *settings)
    return len(crystals) / (time.perf_counter() - start)


def kernel_alone(positions: np.ndarray, lattice: np.ndarray, radius: float, *_: object) -> None:
    """pymatgen's compiled neighbour kernel at ``radius``, nothing else."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    find_points_in_spheres(positions, positions, radius, np.ones(3, dtype=np.int64), lattice, 1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, required=True, help="folder of the CSV.gz files")
    parser.add_argument("--n", type=int, default=2000, help="crystals per dataset (first rows)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--old", default="6f97722", help="git revision of the speed to keep")
    parser.add_argument("--exact", default="9f0d4fb", help="git revision of the exact order")
    parser.add_argument("--radius", type=float, default=8.0, help="cutoff in Å")
    parser.add_argument("--max-neighbors", type=int, default=12)
    parser.add_argument("--margin", type=float, default=0.05, help="candidate margin in Å")
    args = parser.parse_args()

    from crystaltwins.graph.neighbors import find_neighbors

    settings = (args.radius, args.max_neighbors, args.margin)
    with tempfile.TemporaryDirectory() as workdir:
        versions = {
            "old": load_revision(args.old, Path(workdir)).find_neighbors,
            "exact": load_revision(args.exact, Path(workdir)).find_neighbors,
            "new": find_neighbors,
            "kernel": kernel_alone,
        }
    print(
        f"# bench_neighbors: {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"Python {platform.python_version()}, NumPy {np.__version__}, old={args.old}, "
        f"exact={args.exact}, radius={args.radius}, max_neighbors={args.max_neighbors}, "
        f"margin={args.margin}, {args.repeats} interleaved rounds, medians"
    )
    print()
    print(
        "| dataset | crystals | atoms/crystal | old (crystals/s) | exact (crystals/s) "
        "| new (crystals/s) | kernel alone (crystals/s) | new/old | new/exact | new = exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed_any = False
    for name in DATASETS:
        crystals, failed = read_crystals(args.data_root / f"{name}.csv.gz", args.n)
        if failed:
            print(f"# {name}: {failed} rows failed to parse, left out", file=sys.stderr)
        # Equality at the run's settings and with the candidate margin off.
        bad = mismatches(versions["new"], versions["exact"], crystals, settings)
        bad += mismatches(versions["new"], versions["exact"], crystals, settings[:2] + (0.0,))
        failed_any |= bool(bad)
        rates: dict[str, list[float]] = {key: [] for key in versions}
        ratios_old, ratios_exact = [], []
        keys = list(versions)
        for round_index in range(args.repeats):
            # Rotate the order each round so that no version always runs first or last.
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                rates[key].append(time_pass(versions[key], crystals, settings))
            ratios_old.append(rates["new"][-1] / rates["old"][-1])
            ratios_exact.append(rates["new"][-1] / rates["exact"][-1])
        med = {key: float(np.median(values)) for key, values in rates.items()}
        atoms = np.mean([positions.shape[0] for _, positions, _ in crystals])
        print(
            f"| {name} | {len(crystals)} | {atoms:.1f} | {med['old']:.0f} | {med['exact']:.0f} "
            f"| {med['new']:.0f} | {med['kernel']:.0f} | {np.median(ratios_old):.2f}x | {np.median(ratios_exact):.2f}x "
            f"| {'yes' if not bad else f'NO ({len(bad)}: {bad[:3]})'} |",
            flush=True,
        )
    if failed_any:
        sys.exit(1)


if __name__ == "__main__":
    main()
