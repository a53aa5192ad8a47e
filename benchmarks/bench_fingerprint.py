"""Cost of the graph cache's source fingerprint (a streaming SHA-256 of the source's content).

    PYTHONPATH=src python benchmarks/bench_fingerprint.py /work/shared/data/qmof.csv.gz

Prints the file size, the best and median of ``--repeat`` runs (the file in the page cache after
the first), and the throughput; run it right after dropping caches for the cold-read cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from crystaltwins.data.cache import source_fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a data file or folder")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = args.source
    size = (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        digest = source_fingerprint(path)
        seconds.append(time.perf_counter() - start)
    print(
        f"{path}: {size / 1e6:.1f} MB, sha256 {digest[:16]}...; first {seconds[0]:.3f} s, "
        f"best {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s "
        f"({size / 1e6 / min(seconds):.0f} MB/s best)"
    )


if __name__ == "__main__":
    main()
