"""The record of the crystals whose labels a fine-tuned model learned from."""

from __future__ import annotations

import numpy as np
import torch

from crystaltwins.models.provenance import (
    LABELLED_KEY,
    check_labelled_record,
    id_hashes,
    labelled_record,
    seen_ids,
)


def test_hashes_are_sorted_unique_and_do_not_depend_on_order():
    ids = [f"mp-{k}" for k in range(2000)]
    hashes = id_hashes(ids)
    assert hashes.dtype == np.int64 and len(hashes) == 2000
    assert np.all(np.diff(hashes) > 0)
    assert np.array_equal(id_hashes(list(reversed(ids)) + ids[:10]), hashes)
    assert np.array_equal(id_hashes(range(5)), id_hashes([str(k) for k in range(5)]))


def test_seen_ids_finds_exactly_the_recorded_ones_in_the_order_given():
    info = {LABELLED_KEY: labelled_record(["a", "b", "mp-3"])}
    assert check_labelled_record(info[LABELLED_KEY]) is None
    assert seen_ids(info, ["x", "mp-3", "b", "mp-30", "B"]) == ["mp-3", "b"]
    assert seen_ids(info, []) == []
    assert seen_ids({}, ["a"]) is None  # a file that records nothing: nothing can be counted


def test_a_malformed_record_is_named():
    assert "1-d int64" in check_labelled_record(torch.zeros(2, 2, dtype=torch.int64))
    assert "sorted and unique" in check_labelled_record(torch.tensor([5, 5]))
    assert "expected a tensor" in check_labelled_record(np.arange(3))
