"""Splits: seeded random, from a column, from files of ids."""

from __future__ import annotations

import numpy as np
import pytest

from crystaltwins.data.splits import cap_split, random_split, split_from_files, split_from_labels


def test_random_split_is_seeded_disjoint_and_complete():
    a, b = random_split(1000, (0.6, 0.2, 0.2), seed=1), random_split(1000, (0.6, 0.2, 0.2), seed=1)
    assert a.sizes() == {"train": 600, "val": 200, "test": 200}
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, random_split(1000, (0.6, 0.2, 0.2), seed=2).test)
    everything = np.concatenate([a.train, a.val, a.test])
    assert sorted(everything.tolist()) == list(range(1000))
    assert random_split(100, (0.95, 0.05, 0.0)).sizes() == {"train": 95, "val": 5, "test": 0}


def test_split_from_labels_and_files(tmp_path):
    split = split_from_labels(["train", "validation", "test", "Train"])
    assert (
        split.train.tolist() == [0, 3] and split.val.tolist() == [1] and split.test.tolist() == [2]
    )
    with pytest.raises(ValueError, match="unknown split names"):
        split_from_labels(["train", "holdout"])
    ids = ["a", "b", "c", "d"]
    for name, content in (("tr", "a\nd\n"), ("va", "# validation\nb\n"), ("te", "c\n")):
        (tmp_path / name).write_text(content)
    split = split_from_files(ids, tmp_path / "tr", tmp_path / "va", tmp_path / "te")
    assert (
        split.train.tolist() == [0, 3] and split.val.tolist() == [1] and split.test.tolist() == [2]
    )
    (tmp_path / "te").write_text("zz\n")
    with pytest.raises(ValueError, match="not in the data"):
        split_from_files(ids, tmp_path / "tr", tmp_path / "va", tmp_path / "te")
    (tmp_path / "te").write_text("c\nd\n")  # d is a training crystal too
    with pytest.raises(ValueError, match=r"1 ids are in both the train and the test .*\['d'\]"):
        split_from_files(ids, tmp_path / "tr", tmp_path / "va", tmp_path / "te")
    # an id listed twice in one file counted its crystal twice: refused
    (tmp_path / "te").write_text("c\nc\n")
    with pytest.raises(ValueError, match=r"te: 1 ids listed more than once, e.g. \['c'\]"):
        split_from_files(ids, tmp_path / "tr", tmp_path / "va", tmp_path / "te")
    # a listed crystal the data could not use (unreadable, no label) is left out, not an error
    (tmp_path / "te").write_text("c\nbad\n")
    left_out: list[str] = []
    split = split_from_files(
        ids, tmp_path / "tr", tmp_path / "va", tmp_path / "te", unusable={"bad"}, left_out=left_out
    )
    assert split.test.tolist() == [2] and left_out == ["bad"]
    # a crystal with no split name is in no part; an unknown name is still refused
    split = split_from_labels(["train", " ", "test", "val"])
    assert (split.train.tolist(), split.val.tolist(), split.test.tolist()) == ([0], [3], [2])


PARTS = ("train", "val", "test")


def test_cap_split_takes_seeded_sorted_subsets_within_each_part() -> None:
    split = random_split(5000, (0.6, 0.2, 0.2), seed=3)
    capped = cap_split(split, seed=3, max_train=1000, max_eval=200)
    for part, whole, size in (
        (capped.train, split.train, 1000),
        (capped.val, split.val, 200),
        (capped.test, split.test, 200),
    ):
        assert len(part) == size and len(np.unique(part)) == size
        assert np.all(np.diff(part) > 0) and np.isin(part, whole).all()
    again = cap_split(split, seed=3, max_train=1000, max_eval=200)
    assert all(np.array_equal(getattr(again, p), getattr(capped, p)) for p in PARTS)
    other = cap_split(split, seed=4, max_train=1000, max_eval=200)
    assert not np.array_equal(capped.train, other.train)
    # no cap, or a cap above the size: the parts unchanged
    same = cap_split(split, seed=3, max_train=None, max_eval=10_000)
    assert all(np.array_equal(getattr(same, p), getattr(split, p)) for p in PARTS)


def test_matbench_split_is_matbench_v01_kfold() -> None:
    """Test parts are the folds of KFold(5, shuffle=True, random_state=18012019); validation is a
    seeded quarter of the rest; the five test folds partition the data."""
    from sklearn.model_selection import KFold

    from crystaltwins.data.splits import matbench_split

    n = 1003
    expected = [test for _, test in KFold(5, shuffle=True, random_state=18012019).split(range(n))]
    tests = []
    for fold in range(5):
        split = matbench_split(n, fold, seed=3)
        np.testing.assert_array_equal(split.test, np.sort(expected[fold]))
        rest = np.setdiff1d(np.arange(n), split.test)
        np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.val])), rest)
        assert abs(len(split.val) - len(rest) / 4) <= 1
        tests.append(split.test)
    assert sorted(np.concatenate(tests).tolist()) == list(range(n))
    np.testing.assert_array_equal(
        matbench_split(n, 2, seed=3).val, matbench_split(n, 2, seed=3).val
    )
    assert not np.array_equal(matbench_split(n, 2, seed=3).val, matbench_split(n, 2, seed=4).val)
    with pytest.raises(ValueError, match="fold must be 0..4"):
        matbench_split(n, 5)
