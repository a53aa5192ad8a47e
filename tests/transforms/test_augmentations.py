"""Augmentations on cached graphs: RP equals a rebuild from the perturbed structure; AM, EM."""

from __future__ import annotations

import numpy as np
import pytest

from crystaltwins.graph.crystal_graph import build_crystal_graph
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.transforms import (
    AtomMasking,
    EdgeMasking,
    RandomPerturbation,
    build_augmentation,
)
from crystaltwins.transforms.perturbation import random_displacements
from tests.helpers import read_structures


@pytest.fixture(scope="module")
def graphs(data_dir):
    structures = read_structures(data_dir / "perovskites.csv.gz", 30)
    structures += read_structures(data_dir / "mp36k.csv.gz", 30)
    structures += read_structures(data_dir / "hoip.csv.gz", 5)
    return [(s, build_crystal_graph(s, id=i)) for i, s in structures]


def _edges_by_centre(graph):
    """Per centre: its edges as {(neighbour, image): distance}."""
    e = graph.edges
    out = {i: {} for i in range(graph.num_atoms)}
    for i, j, n, d in zip(e.src, e.dst, e.image.tolist(), e.distance, strict=True):
        out[int(i)][(int(j), tuple(n))] = float(d)
    return out


def assert_same_graph(view, rebuilt, atol=1e-9):
    """The same edges, with distances equal to float rounding; the only freedom allowed is the
    exact tie that survives random displacements: images n, m of an atom and itself with
    |n·L| = |m·L| at the last place (the same atom at the same distance: the same features)."""
    ours, theirs = _edges_by_centre(view), _edges_by_centre(rebuilt)
    swapped = 0
    for i in ours:
        mine, ref = ours[i], theirs[i]
        assert len(mine) == len(ref), i
        for key in mine.keys() & ref.keys():
            assert abs(mine[key] - ref[key]) <= atol, (i, key)
        only_mine = sorted(mine[k] for k in mine.keys() - ref.keys())
        only_ref = sorted(ref[k] for k in ref.keys() - mine.keys())
        assert all(j == i for j, _ in mine.keys() - ref.keys()), (i, mine.keys() - ref.keys())
        assert all(j == i for j, _ in ref.keys() - mine.keys()), (i, ref.keys() - mine.keys())
        np.testing.assert_allclose(only_mine, only_ref, atol=atol, rtol=0)
        if only_mine:
            # A tie at the cut: the swapped self-images are as far as the farthest kept edge.
            assert abs(only_mine[-1] - max(mine.values())) <= atol, i
            swapped += 1
    return swapped


def test_perturbation_equals_rebuild_from_perturbed_structure(graphs):
    transform = RandomPerturbation(0.05, None)
    swapped = 0
    for k, (structure, graph) in enumerate(graphs):
        view = transform(graph, np.random.default_rng(k))
        # The same displacement applied to the structure, then the graph rebuilt from scratch.
        shift = random_displacements(graph.num_atoms, 0.05, None, np.random.default_rng(k))
        moved = structure.copy()
        for i, vector in enumerate(shift):
            moved.translate_sites([i], vector, frac_coords=False, to_unit_cell=False)
        rebuilt = build_crystal_graph(moved)
        np.testing.assert_allclose(view.positions, rebuilt.positions, atol=1e-9)
        swapped += assert_same_graph(view, rebuilt)
        # Every atom moved by exactly 0.05 Å (pymatgen Structure.perturb semantics).
        np.testing.assert_allclose(np.linalg.norm(view.positions - graph.positions, axis=1), 0.05)
    # Such self-image ties do occur here (cubic perovskites), so the check above is exercised.
    assert swapped > 0


def test_perturbation_needs_enough_cache_margin():
    with pytest.raises(ValueError, match="perturbation_margin"):
        RandomPerturbation(0.2, settings=GraphSettings(perturbation_margin=0.05))


def test_atom_masking_zeroes_ten_percent_at_least_one(graphs):
    for _, graph in graphs:
        view = AtomMasking(0.1)(graph, np.random.default_rng(1))
        masked = int((view.atomic_numbers == 0).sum())
        assert masked == max(1, int(np.floor(0.1 * graph.num_atoms)))
        assert (graph.atomic_numbers > 0).all()  # the cached graph is untouched
        assert len(view.edges) == len(graph.edges)


def test_edge_masking_removes_edges_without_padding(graphs):
    """As Crystal Twins: floor(0.1 x degree) edges of every centre atom (one of 12: the
    reference keeps ceil(0.9 x 12) = 11); per crystal on request (at least one)."""
    for _, graph in graphs:
        view = EdgeMasking(0.1)(graph, np.random.default_rng(2))
        degree = np.bincount(graph.edges.src, minlength=len(graph.atomic_numbers))
        kept = np.bincount(view.edges.src, minlength=len(graph.atomic_numbers))
        np.testing.assert_array_equal(degree - kept, np.floor(0.1 * degree))
        per_crystal = EdgeMasking(0.1, per="crystal")(graph, np.random.default_rng(2))
        removed = len(graph.edges) - len(per_crystal.edges)
        assert removed == max(1, int(np.floor(0.1 * len(graph.edges))))
        assert len(EdgeMasking(0.0)(graph, np.random.default_rng(2)).edges) == len(graph.edges)
        kept = {
            (a, b, tuple(n))
            for a, b, n in zip(
                view.edges.src, view.edges.dst, view.edges.image.tolist(), strict=True
            )
        }
        original = {
            (a, b, tuple(n))
            for a, b, n in zip(
                graph.edges.src, graph.edges.dst, graph.edges.image.tolist(), strict=True
            )
        }
        assert kept < original


def test_views_are_seeded_and_independent(graphs):
    augment = build_augmentation("rp,am,em")
    _, graph = graphs[40]
    a1 = augment(graph, np.random.default_rng(7))
    a2 = augment(graph, np.random.default_rng(7))
    np.testing.assert_array_equal(a1.positions, a2.positions)
    np.testing.assert_array_equal(a1.atomic_numbers, a2.atomic_numbers)
    np.testing.assert_array_equal(a1.edges.dst, a2.edges.dst)
    rng = np.random.default_rng(7)
    v1, v2 = augment(graph, rng), augment(graph, rng)
    assert not np.allclose(v1.positions, v2.positions)


def test_build_augmentation_parses_names():
    assert [type(t).__name__ for t in build_augmentation("rp,am,em").transforms] == [
        "RandomPerturbation",
        "AtomMasking",
        "EdgeMasking",
    ]
    assert [type(t).__name__ for t in build_augmentation("am, em").transforms] == [
        "AtomMasking",
        "EdgeMasking",
    ]
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augmentation("rp,xx")


def test_batch_augmentation_equals_rebuild_and_masks_per_crystal(graphs):
    """The vectorised batch versions: RP re-selects exactly, AM/EM mask per crystal."""
    from crystaltwins.graph.batch import GraphArrays

    structures = [s for s, _ in graphs]
    arrays = GraphArrays.from_graphs([g for _, g in graphs])
    moved = RandomPerturbation(0.05, None).batch(arrays, np.random.default_rng(3))
    shift = moved.positions - arrays.positions
    np.testing.assert_allclose(np.linalg.norm(shift, axis=1), 0.05)
    start = 0
    for structure in structures:
        n = len(structure)
        rebuilt_structure = structure.copy()
        for i in range(n):
            rebuilt_structure.translate_sites(
                [i], shift[start + i], frac_coords=False, to_unit_cell=False
            )
        rebuilt = build_crystal_graph(rebuilt_structure)
        mine = (moved.edge_src >= start) & (moved.edge_src < start + n)
        ours = sorted(
            zip(
                moved.edge_src[mine] - start,
                moved.edge_dst[mine] - start,
                np.round(moved.edge_distance[mine], 6),
                strict=True,
            )
        )
        theirs = sorted(
            zip(
                rebuilt.edges.src,
                rebuilt.edges.dst,
                np.round(rebuilt.edges.distance, 6),
                strict=True,
            )
        )
        assert [(a, b) for a, b, _ in ours] == [(a, b) for a, b, _ in theirs]
        np.testing.assert_allclose([d for *_, d in ours], [d for *_, d in theirs], atol=2e-6)
        start += n
    masked = AtomMasking(0.1).batch(arrays, np.random.default_rng(4))
    per_crystal = np.bincount(
        arrays.atom_crystal[masked.atomic_numbers == 0], minlength=arrays.num_crystals
    )
    sizes = np.bincount(arrays.atom_crystal)
    np.testing.assert_array_equal(per_crystal, np.maximum(1, np.floor(0.1 * sizes)))
    dropped = EdgeMasking(0.1, per="crystal").batch(arrays, np.random.default_rng(5))
    before = np.bincount(arrays.atom_crystal[arrays.edge_src], minlength=arrays.num_crystals)
    after = np.bincount(arrays.atom_crystal[dropped.edge_src], minlength=arrays.num_crystals)
    np.testing.assert_array_equal(before - after, np.maximum(1, np.floor(0.1 * before)))
    per_atom = EdgeMasking(0.1).batch(arrays, np.random.default_rng(5))
    atoms = len(arrays.atomic_numbers)
    degree = np.bincount(arrays.edge_src, minlength=atoms)
    kept = np.bincount(per_atom.edge_src, minlength=atoms)
    np.testing.assert_array_equal(degree - kept, np.floor(0.1 * degree))
    batch = dropped.to_batch()
    assert batch.num_edges == len(dropped.edge_src) and batch.num_crystals == len(graphs)


def test_perturbation_lengths_are_uniform_as_in_crystal_twins():
    """pymatgen's PerturbStructureTransformation(distance=0.05, min_distance=0.0), as the
    Crystal Twins code: lengths uniform in [0, 0.05] Å (mean 0.025); min_distance None: all
    exactly 0.05 Å."""
    from crystaltwins.transforms.perturbation import random_displacements

    rng = np.random.default_rng(0)
    lengths = np.linalg.norm(random_displacements(20_000, 0.05, 0.0, rng), axis=1)
    assert lengths.min() < 0.001 and lengths.max() <= 0.05
    assert abs(lengths.mean() - 0.025) < 0.001
    fixed = np.linalg.norm(random_displacements(100, 0.05, None, rng), axis=1)
    np.testing.assert_allclose(fixed, 0.05)


def test_two_moves_equal_a_rebuild_from_the_twice_moved_structure(data_dir):
    """RP, then GN (as ``--augment rp,gn``): the second move re-selects from the whole pool
    (no edge twice, none lost), and equals a rebuild from the structure moved by both; the
    cache's margin must cover the moves' sum."""
    from crystaltwins.graph.batch import GraphArrays

    settings = GraphSettings(perturbation_margin=0.11)  # 0.05 (RP) + 3 x 0.02 (GN)
    structures = read_structures(data_dir / "perovskites.csv.gz", 12)
    structures += read_structures(data_dir / "mp36k.csv.gz", 12)
    graphs = [build_crystal_graph(s, settings, id=i) for i, s in structures]
    arrays = GraphArrays.from_graphs(graphs)
    both = build_augmentation("rp,gn", settings, options={"gn": {"sigma": 0.02}})
    for seed in range(3):
        moved = both.batch(arrays, np.random.default_rng(seed))
        edges = np.stack([moved.edge_src, moved.edge_dst, *moved.edge_shift.round(6).T], axis=1)
        assert len(np.unique(edges, axis=0)) == len(edges), "an edge selected twice"
        pool = len(arrays.edge_src) + len(arrays.cand_src)
        assert len(moved.edge_src) + len(moved.cand_src) == pool  # the pool kept whole
        np.testing.assert_array_equal(moved.clean_positions, arrays.positions)
        start = 0
        for (_, structure), graph in zip(structures, graphs, strict=True):
            n = graph.num_atoms
            shift = moved.positions[start : start + n] - arrays.positions[start : start + n]
            rebuilt_structure = structure.copy()
            for i in range(n):
                rebuilt_structure.translate_sites(
                    [i], shift[i], frac_coords=False, to_unit_cell=False
                )
            rebuilt = build_crystal_graph(rebuilt_structure)
            mine = (moved.edge_src >= start) & (moved.edge_src < start + n)
            ours = sorted(np.round(moved.edge_distance[mine], 6).tolist())
            theirs = sorted(np.round(rebuilt.edges.distance, 6).tolist())
            assert ours == theirs, (seed, graph.id)
            start += n
    too_far = build_augmentation(
        "rp,gn", GraphSettings(perturbation_margin=0.06), options={"gn": {"sigma": 0.02}}
    )
    with pytest.raises(ValueError, match="moved .* in all, more than the graph cache's"):
        too_far.batch(arrays, np.random.default_rng(0))


def test_perturbation_defaults_are_the_pretrain_settings():
    """One default: RandomPerturbation() moves as ``pretrain`` does (uniform lengths)."""
    from crystaltwins.training.configs import PretrainConfig

    transform = RandomPerturbation()
    config = PretrainConfig(data=["x"], out="y")
    assert (transform.distance, transform.min_distance) == (
        config.perturbation,
        config.perturbation_min,
    )
