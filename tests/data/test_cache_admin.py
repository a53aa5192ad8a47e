"""`crystaltwins cache list|clean`: only graph caches, never a user's folder, never one in use."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crystaltwins.data.cache import build_graph_cache
from crystaltwins.data.cache_admin import DAY, clean_caches, list_caches
from crystaltwins.io.locks import FileLock, sibling


@pytest.fixture
def root(data_dir: Path, tmp_path: Path) -> Path:
    """A cache root with two graph caches (of 10 crystals), a user's folder with a manifest,
    a cache folder holding a user's file too, and a stray file."""
    root = tmp_path / "root"
    source = data_dir / "samples" / "cgcnn_regression"
    for name in ("old-cache", "new-cache"):
        build_graph_cache(source, root / name, progress=False)
    (root / "mine").mkdir()
    (root / "mine" / "manifest.json").write_text('{"my": "notes"}')
    build_graph_cache(source, root / "shared", progress=False)
    (root / "shared" / "notes.txt").write_text("a user's file")
    (root / "stray.txt").write_text("x")
    week_ago = time.time() - 7 * DAY
    for path in (root / "old-cache").iterdir():
        os.utime(path, (week_ago, week_ago))
    return root


def test_list_shows_only_graph_caches_least_recent_first(root: Path) -> None:
    entries = list_caches(root)
    assert [e.path.name for e in entries] == ["old-cache", "new-cache"]
    old = entries[0]
    assert old.crystals == 10 and old.size > 10_000 and old.source.endswith("cgcnn_regression")
    assert old.settings["radius"] == 8.0 and 6.9 < old.age_days() < 7.1
    assert old.row()[0] == "old-cache" and "8 Å, 12 nb" in old.row()
    assert list_caches(root / "missing") == []


def test_clean_removes_old_caches_and_nothing_else(root: Path) -> None:
    before = sorted(p.name for p in root.iterdir())
    dry = clean_caches(root, older_than_days=3, dry_run=True)
    assert [e.path.name for e in dry.removed] == ["old-cache"] and dry.kept == 1
    assert "would remove" in dry.lines()[-1]
    assert sorted(p.name for p in root.iterdir()) == before  # a dry run changes nothing
    report = clean_caches(root, older_than_days=3)
    assert [e.path.name for e in report.removed] == ["old-cache"] and report.freed > 10_000
    assert not (root / "old-cache").exists() and (root / "new-cache" / "manifest.json").exists()
    everything = clean_caches(root)
    assert [e.path.name for e in everything.removed] == ["new-cache"]
    # the user's folders and files stay, and so do the lock files (removing one is unsafe)
    assert (root / "mine" / "manifest.json").exists() and (root / "shared" / "notes.txt").exists()
    assert (root / "stray.txt").exists() and (root / "new-cache.lock").exists()
    with pytest.raises(ValueError, match="must be ≥ 0 days"):
        clean_caches(root, older_than_days=-1)


def test_clean_skips_a_cache_whose_lock_is_held(root: Path) -> None:
    with FileLock(sibling(root / "new-cache", ".lock")):  # a build in progress
        entries = {e.path.name: e for e in list_caches(root)}
        assert entries["new-cache"].locked and not entries["old-cache"].locked
        report = clean_caches(root)
    assert [e.path.name for e in report.skipped_locked] == ["new-cache"]
    assert [e.path.name for e in report.removed] == ["old-cache"]
    assert (root / "new-cache" / "manifest.json").exists()
    assert "in use by another process" in "\n".join(report.lines())


def test_clean_skips_a_cache_another_run_is_reading(root: Path) -> None:
    """A run reading a cache holds no lock, but maps its arrays: clean keeps that cache (it
    was removed under the run)."""
    import subprocess
    import sys

    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from crystaltwins.data.cache import GraphCache; "
            f"c = GraphCache({str(root / 'new-cache')!r}); print(len(c), flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "10"  # the cache is open
        entries = {e.path.name: e for e in list_caches(root)}
        assert entries["new-cache"].locked and not entries["old-cache"].locked
        report = clean_caches(root)
        assert [e.path.name for e in report.skipped_locked] == ["new-cache"]
        assert (root / "new-cache" / "manifest.json").exists()
    finally:
        reader.stdin.close()
        reader.wait(timeout=60)
    assert [e.path.name for e in clean_caches(root).removed] == ["new-cache"]  # once it ended
