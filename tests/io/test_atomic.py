"""Atomic writes: whole files or nothing, no temporaries left, safe under concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from crystaltwins.io.atomic import (
    atomic_path,
    temporary_path,
    write_json_atomic,
    write_text_atomic,
)
from crystaltwins.io.locks import NAME_MAX


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_json_atomic(target, {"mae": 0.1})
    write_text_atomic(target, '{"mae": 0.2}')
    assert target.read_text() == '{"mae": 0.2}'
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, error):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_temporaries_keep_the_suffix_are_hidden_and_unique(tmp_path):
    first, second = temporary_path(tmp_path / "x.npz"), temporary_path(tmp_path / "x.npz")
    assert first != second
    assert first.suffix == ".npz" and first.name.startswith(".x.tmp-")
    with atomic_path(tmp_path / "e.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, a=np.arange(3))
    assert np.load(tmp_path / "e.npz")["a"].tolist() == [0, 1, 2]


def test_a_name_at_the_file_system_limit_gets_a_short_temporary(tmp_path):
    target = tmp_path / ("y" * (NAME_MAX - 5) + ".json")
    assert len(temporary_path(target).name.encode()) <= NAME_MAX
    write_json_atomic(target, [1, 2])
    assert target.read_text() == "[\n 1,\n 2\n]"


def _write_many(path: str, marker: str, count: int) -> None:
    for k in range(count):
        write_text_atomic(path, f"{marker}{k:04d}" * 20_000)


def test_concurrent_writers_never_leave_a_mixed_or_partial_file(tmp_path):
    """Two processes rewrite the same file 100 times each while this one reads it: every read
    is one whole version, never a mixture or a truncated file."""
    target = tmp_path / "shared.txt"
    write_text_atomic(target, "a0000" * 20_000)
    context = multiprocessing.get_context("spawn" if os.name != "posix" else "fork")
    writers = [
        context.Process(target=_write_many, args=(str(target), marker, 100)) for marker in "ab"
    ]
    for writer in writers:
        writer.start()
    reads = 0
    while any(w.is_alive() for w in writers) or reads == 0:
        text = Path(target).read_text()
        assert len(text) == 100_000 and text == text[:5] * 20_000
        reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.txt"]
