"""Shared helpers for tests: reading a few real crystals from ../shared/data."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import itertools
from pathlib import Path
from types import ModuleType
from typing import Any

from pymatgen.core import Structure

csv.field_size_limit(2**31 - 1)


def read_cifs(path: Path, count: int, start: int = 0) -> list[tuple[str, str]]:
    """The first ``count`` (id, CIF text) rows of a CSV.gz from the shared data, from row ``start``."""
    with gzip.open(path, "rt", newline="") as handle:
        rows = itertools.islice(csv.DictReader(handle), start, start + count)
        return [(row["id"], row["cif"]) for row in rows]


def read_structures(path: Path, count: int, start: int = 0) -> list[tuple[str, Structure]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(i, Structure.from_str(cif, fmt="cif")) for i, cif in read_cifs(path, count, start)]


def cpu_finetune_config(source: Path, out: Path, cache_root: Path, **settings: Any) -> Any:
    """A quiet single-CPU :class:`FinetuneConfig` on ``source``'s ``e_form`` (no progress bar);
    ``settings`` add to or override it."""
    from crystaltwins.training.configs import FinetuneConfig

    base = dict(
        data=str(source),
        target="e_form",
        out=str(out),
        cache_root=str(cache_root),
        progress=False,
        accelerator="cpu",
        devices="1",
    )
    return FinetuneConfig(**{**base, **settings})


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
