"""Epoch-seeded sampling of pre-training keys."""

from __future__ import annotations

import numpy as np

from crystaltwins.training.sampling import EpochSampler


def _keys(sampler: EpochSampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_training_order_is_a_new_seeded_permutation_every_epoch() -> None:
    sampler = EpochSampler(500, shuffle=True, seed=7)
    first, second = _keys(sampler, 0), _keys(sampler, 1)
    indices = [i for i, _ in first]
    assert sorted(indices) == list(range(500)) and indices != list(range(500))
    assert {e for _, e in first} == {0} and {e for _, e in second} == {1}
    assert [i for i, _ in second] != indices
    assert _keys(EpochSampler(500, shuffle=True, seed=7), 1) == second  # as after a resume


def test_fixed_epoch_gives_the_same_mixed_order_and_views_every_epoch() -> None:
    sampler = EpochSampler(500, shuffle=True, seed=7, fixed_epoch=0)
    first = _keys(sampler, 0)
    assert _keys(sampler, 5) == first
    indices = np.array([i for i, _ in first])
    # mixed: not in file order, so a batch is not one source's crystals
    assert sorted(indices.tolist()) == list(range(500)) and np.any(np.diff(indices) < 0)
    assert {e for _, e in first} == {0}


def test_unshuffled_order_and_plain_indices() -> None:
    sampler = EpochSampler(10, shuffle=False, with_epoch=False)
    assert list(sampler) == list(range(10)) and len(sampler) == 10


def test_the_rank_is_read_when_the_order_is_drawn(monkeypatch) -> None:
    """Lightning starts the process group inside ``fit``, after the loaders (and their
    samplers) are made: a sampler made before must still split the order between ranks."""
    import torch.distributed as dist

    sampler = EpochSampler(10, shuffle=True, seed=3, with_epoch=False)
    whole = list(sampler)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        assert len(sampler) == 5
        parts.append(list(sampler))
    assert parts[0] == whole[0::2] and parts[1] == whole[1::2]
    assert sorted(parts[0] + parts[1]) == list(range(10))
