"""Fixtures: the shared real datasets and the published Crystal Twins checkpoints.

``CRYSTALTWINS_DATA`` (default ``<repo>/../shared/data``) and ``CRYSTALTWINS_REFERENCE``
(default ``<repo>/../shared/reference/crystal_twins``) point at them; tests that need them skip,
with the reason, when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _folder(variable: str, default: Path) -> Path:
    return Path(os.environ.get(variable, default)).resolve()  # tests may change directory


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _folder("CRYSTALTWINS_DATA", REPO.parent / "shared" / "data")
    if not (path / "perovskites.csv.gz").exists():
        pytest.skip(f"shared crystal data not found at {path} (set CRYSTALTWINS_DATA)")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = _folder("CRYSTALTWINS_REFERENCE", REPO.parent / "shared" / "reference" / "crystal_twins")
    if not (path / "atom_init.json").exists():
        pytest.skip(
            f"published Crystal Twins files not found at {path} (set CRYSTALTWINS_REFERENCE)"
        )
    return path


@pytest.fixture(scope="session")
def perovskite_subset(data_dir, tmp_path_factory) -> Path:
    """The first 1,500 real perovskites (id, cif, e_form, ...) as a CSV.gz: small, fast runs."""
    import csv
    import gzip
    import itertools

    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("data") / "perovskites_1500.csv.gz"
    with (
        gzip.open(data_dir / "perovskites.csv.gz", "rt", newline="") as src,
        gzip.open(path, "wt", newline="") as dst,
    ):
        reader = csv.reader(src)
        csv.writer(dst).writerows(itertools.islice(reader, 1501))
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One graph-cache folder shared by the tests of a session."""
    return tmp_path_factory.mktemp("caches")
