"""Hand-built crystal graph batches and the reference element table for the model tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from crystaltwins.graph.batch import CrystalGraphBatch

REPO_ROOT = Path(__file__).resolve().parents[2]


def reference_dir() -> Path:
    """Directory of the published Crystal Twins files (``$CRYSTALTWINS_REFERENCE``)."""
    default = REPO_ROOT.parent / "shared" / "reference" / "crystal_twins"
    return Path(os.environ.get("CRYSTALTWINS_REFERENCE", default)).resolve()


def random_table(n_z: int = 101, n_features: int = 92, seed: int = 0) -> torch.Tensor:
    """A 0/1 element table like CGCNN's (row 0 zeros)."""
    gen = torch.Generator().manual_seed(seed)
    table = (torch.rand(n_z, n_features, generator=gen) < 0.1).float()
    table[0] = 0.0
    return table


def make_crystal(
    n_atoms: int, n_edges_per_atom: int, gen: torch.Generator, max_z: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(atomic_numbers, edge_index local, distances) of one random crystal graph."""
    z = torch.randint(1, max_z + 1, (n_atoms,), generator=gen)
    centre = torch.arange(n_atoms).repeat_interleave(n_edges_per_atom)
    neighbour = torch.randint(0, n_atoms, (n_atoms * n_edges_per_atom,), generator=gen)
    dist = 1.5 + 6.0 * torch.rand(n_atoms, n_edges_per_atom, generator=gen)
    return z, torch.stack((centre, neighbour)), dist.sort(dim=1).values.reshape(-1)


def collate(crystals: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> CrystalGraphBatch:
    """Stack crystals into one batch (indices made global)."""
    zs, edges, dists, owner = [], [], [], []
    offset = 0
    for k, (z, edge_index, dist) in enumerate(crystals):
        zs.append(z)
        edges.append(edge_index + offset)
        dists.append(dist)
        owner.append(torch.full((z.shape[0],), k, dtype=torch.long))
        offset += z.shape[0]
    return CrystalGraphBatch(
        atomic_numbers=torch.cat(zs),
        edge_index=torch.cat(edges, dim=1),
        edge_distance=torch.cat(dists).float(),
        crystal_index=torch.cat(owner),
        num_crystals=len(crystals),
        ids=[f"c{k}" for k in range(len(crystals))],
    )


def random_crystals(
    n_crystals: int, seed: int = 0, sizes: tuple[int, int] = (2, 9), n_edges: int = 6
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_crystals):
        n_atoms = int(torch.randint(sizes[0], sizes[1], (1,), generator=gen))
        out.append(make_crystal(n_atoms, n_edges, gen))
    return out


@pytest.fixture
def table() -> torch.Tensor:
    return random_table()


@pytest.fixture
def reference_atom_init() -> Path:
    path = reference_dir() / "atom_init.json"
    if not path.is_file():
        pytest.skip(f"reference atom_init.json not found at {path} (set CRYSTALTWINS_REFERENCE)")
    return path


def read_atom_init(path: Path) -> torch.Tensor:
    """Element table from an atom_init.json, read directly (row Z = element Z, row 0 zeros)."""
    raw = json.loads(path.read_text())
    table = torch.zeros(max(int(k) for k in raw) + 1, len(next(iter(raw.values()))))
    for key, values in raw.items():
        table[int(key)] = torch.tensor(values, dtype=torch.float32)
    return table


@pytest.fixture
def crystals_factory():
    """``crystals_factory(n_crystals, seed=0, sizes=(2, 9), n_edges=6)`` → list of crystals."""
    return random_crystals


@pytest.fixture
def collate_fn():
    """``collate_fn(crystals)`` → :class:`CrystalGraphBatch`."""
    return collate


@pytest.fixture
def ref_dir() -> Path:
    path = reference_dir()
    if not path.is_dir():
        pytest.skip(
            f"Crystal Twins reference files not found at {path} (set CRYSTALTWINS_REFERENCE)"
        )
    return path


@pytest.fixture
def atom_init_table(reference_atom_init: Path) -> torch.Tensor:
    return read_atom_init(reference_atom_init)
