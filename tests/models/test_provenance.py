"""The record of the crystals whose labels a fine-tuned model learned from."""

from __future__ import annotations

import numpy as np
import torch

from crystaltwins.models.provenance import (
    EARLIER_KEY,
    LABELLED_KEY,
    check_labelled_record,
    check_provenance,
    earlier_records,
    id_hashes,
    labelled_hashes,
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
    info = {"data_source": "/data/mp36k.csv.gz", LABELLED_KEY: labelled_record(["a", "b", "mp-3"])}
    assert check_labelled_record(info[LABELLED_KEY]) is None and check_provenance(info) is None
    assert seen_ids(info, ["x", "mp-3", "b", "mp-30", "B"], "mp36k.csv.gz") == ["mp-3", "b"]
    assert seen_ids(info, [], "mp36k.csv.gz") == []
    # matched by the file's name up to its first dot: another folder, format, or a cache folder
    for same in ("other/mp36k.csv", "/caches/mp36k", "mp36k.json"):
        assert seen_ids(info, ["a"], same) == ["a"], same
    assert seen_ids(info, ["a"], "perovskites.csv.gz") is None  # labels of another file
    assert seen_ids({}, ["a"], "mp36k.csv.gz") is None  # a file that records nothing


def test_a_chain_of_fine_tuned_models_keeps_every_record():
    """A on X, B from A on Y, C from B on X: C's file still knows A's crystals of X."""
    a = {"data_source": "X.csv", LABELLED_KEY: labelled_record(["x1", "x2"])}
    b = {
        "data_source": "Y.csv",
        LABELLED_KEY: labelled_record(["y1"]),
        EARLIER_KEY: earlier_records(a),
    }
    c = {
        "data_source": "X.csv",
        LABELLED_KEY: labelled_record(["x3"]),
        EARLIER_KEY: earlier_records(b),
    }
    assert check_provenance(c) is None
    assert [r["data_source"] for r in c[EARLIER_KEY]] == ["Y", "X"]
    assert np.array_equal(labelled_hashes(c), id_hashes(["x1", "x2", "x3"]))
    assert seen_ids(c, ["x1", "x3", "y1", "x9"], "X.csv.gz") == ["x1", "x3"]
    assert seen_ids(c, ["x1", "y1"], "Y.csv") == ["y1"]


def test_a_malformed_record_is_named():
    assert "1-d int64" in check_labelled_record(torch.zeros(2, 2, dtype=torch.int64))
    assert "sorted and unique" in check_labelled_record(torch.tensor([5, 5]))
    assert "expected a tensor" in check_labelled_record(np.arange(3))
    record = labelled_record(["a"])
    assert "info.labelled_earlier[0] is not" in check_provenance({EARLIER_KEY: [{"x": 1}]})
    bad = {EARLIER_KEY: [{"data_source": "X", LABELLED_KEY: torch.tensor([2, 1])}]}
    assert "info.labelled_earlier[0].labelled_id_hashes is not sorted" in check_provenance(bad)
    assert "not a list" in check_provenance(
        {EARLIER_KEY: [{"data_source": "X", LABELLED_KEY: record}] * 101}
    )
