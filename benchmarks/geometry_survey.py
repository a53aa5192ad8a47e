"""Geometry of real crystals against the limits of :mod:`crystaltwins.graph.geometry`.

For a strided sample of each dataset: the shortest interatomic distance (periodic images
included), the thinnest cell height, the largest neighbour-search estimates (atom images, pairs)
and the largest |image| component, and which crystals the limits reject (there should be none).

    PYTHONPATH=src python benchmarks/geometry_survey.py /work/shared/data --per-dataset 2000
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings
from pathlib import Path

import numpy as np

from crystaltwins.graph import geometry
from crystaltwins.graph.crystal_graph import build_crystal_graph
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.readers import iter_entries, parse_entry
from crystaltwins.io.records import CrystalInputError

DATASETS = ("perovskites", "mp36k", "hoip", "mp_elasticity", "qmof", "perovskite_synth")


def survey(path: Path, count: int, settings: GraphSettings) -> dict[str, object]:
    entries = list(iter_entries(path))
    step = max(1, len(entries) // count)
    sample = entries[::step][:count]
    radius = settings.radius + 2 * settings.perturbation_margin
    stats = {
        "file": path.name,
        "rows": len(entries),
        "sampled": len(sample),
        "min_distance": (math.inf, ""),
        "min_height": (math.inf, ""),
        "max_points": (0, ""),
        "max_pairs": (0.0, ""),
        "max_image": (0, ""),
        "rejected": [],
        "other_errors": 0,
    }
    start = time.perf_counter()
    for entry in sample:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = parse_entry(entry).structure
        except CrystalInputError:
            stats["other_errors"] += 1
            continue
        lattice = structure.lattice.matrix
        heights = geometry.cell_heights(lattice)
        n = len(structure)
        points = n * math.prod(2 * math.ceil(radius / h) + 1 for h in heights)
        pairs = n * n * (4 / 3 * math.pi * radius**3) / structure.volume
        for key, value, better in (
            ("min_height", float(heights.min()), min),
            ("max_points", points, max),
            ("max_pairs", pairs, max),
        ):
            if better(value, stats[key][0]) == value and value != stats[key][0]:
                stats[key] = (value, entry.id)
        try:
            graph = build_crystal_graph(structure, settings, id=entry.id, source=entry.source)
        except CrystalInputError as error:
            if any(
                word in error.reason for word in ("Å apart", "too thin", "cells away", "too small")
            ):
                stats["rejected"].append(f"{entry.id}: {error.reason}")
            else:
                stats["other_errors"] += 1
            continue
        distance = float(graph.edges.distance.min())
        if distance < stats["min_distance"][0]:
            stats["min_distance"] = (distance, entry.id)
        image = int(np.abs(np.concatenate([graph.edges.image, graph.candidates.image])).max())
        if image > stats["max_image"][0]:
            stats["max_image"] = (image, entry.id)
    stats["seconds"] = time.perf_counter() - start
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder of the shared datasets")
    parser.add_argument("--per-dataset", type=int, default=2000)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = parser.parse_args()
    settings = GraphSettings()
    print(
        f"limits: min distance {geometry.MIN_INTERATOMIC_DISTANCE} Å, search points "
        f"{geometry.MAX_SEARCH_POINTS:.0e}, pairs {geometry.MAX_SEARCH_PAIRS:.0e}, image "
        f"dtype {np.dtype(geometry.IMAGE_DTYPE).name}"
    )
    for name in args.datasets:
        stats = survey(args.data / f"{name}.csv.gz", args.per_dataset, settings)
        print(
            f"{stats['file']}: {stats['sampled']} of {stats['rows']} crystals in "
            f"{stats['seconds']:.0f} s; min distance {stats['min_distance'][0]:.3f} Å "
            f"({stats['min_distance'][1]}), min height {stats['min_height'][0]:.3f} Å "
            f"({stats['min_height'][1]}), max images searched {stats['max_points'][0]:,} "
            f"({stats['max_points'][1]}), max est. pairs {stats['max_pairs'][0]:,.0f} "
            f"({stats['max_pairs'][1]}), max |image| {stats['max_image'][0]} "
            f"({stats['max_image'][1]}); rejected by the limits: {len(stats['rejected'])}; "
            f"other errors: {stats['other_errors']}"
        )
        for line in itertools.islice(stats["rejected"], 10):
            print(f"  {line}")


if __name__ == "__main__":
    main()
