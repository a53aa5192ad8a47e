"""The graph caches under a cache root: list them, remove old ones (``crystaltwins cache``).

Only crystaltwins graph caches are ever removed: folders holding a cache manifest and nothing
but the cache's own files (:func:`~crystaltwins.data.cache.check_cache_target`). A cache whose
lock another process holds (a build in progress) is skipped. A cache is removed by renaming it
to a temporary name first (``<cache>.old-<pid>-<random>``), so that no process ever opens a half
removed cache; an interrupted removal is finished by the next build or ``clean``. Lock files
(``<cache>.lock``, a few bytes) are kept: removing one could let two builds run at once.

"Last use" is the latest change of the cache's files or access of its arrays, as the file
system records it (most record access times at most once a day: good to a day).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystaltwins.data.cache import check_cache_target
from crystaltwins.data.sources import default_cache_root
from crystaltwins.io.locks import (
    FileLock,
    LockedError,
    remove_stale_temporaries,
    sibling,
    temporary_sibling,
)

#: Seconds in a day (``--older-than`` is in days).
DAY = 86_400.0


@dataclass
class CacheEntry:
    """One graph cache under the root.

    :param size: bytes on disk of its files; :param last_used: seconds since the epoch.
    """

    path: Path
    size: int
    source: str
    settings: dict[str, Any]
    crystals: int
    created: str
    last_used: float
    locked: bool = False

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.last_used) / DAY

    def row(self, now: float | None = None) -> list[str]:
        """``name, size, crystals, last use, settings, source`` as text."""
        settings = (
            f"{self.settings.get('radius', '?'):g} Å, {self.settings.get('max_neighbors', '?')} nb"
            if isinstance(self.settings.get("radius"), (int, float))
            else "?"
        )
        last = f"{self.age_days(now):.1f} d ago" + (" (in use)" if self.locked else "")
        return [
            self.path.name,
            human_size(self.size),
            str(self.crystals),
            last,
            settings,
            self.source,
        ]


@dataclass
class CleanReport:
    """What :func:`clean_caches` removed (or would remove, ``dry_run``) and what it kept."""

    removed: list[CacheEntry] = field(default_factory=list)
    skipped_locked: list[CacheEntry] = field(default_factory=list)
    kept: int = 0
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.removed)

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{verb} {entry.path} ({human_size(entry.size)})" for entry in self.removed]
        lines += [f"skipped {e.path}: in use by another process" for e in self.skipped_locked]
        lines.append(
            f"{verb} {len(self.removed)} caches ({human_size(self.freed)}); kept {self.kept}"
            + (f", {len(self.skipped_locked)} in use" if self.skipped_locked else "")
        )
        return lines


def human_size(size: int) -> str:
    """``1536`` → ``"1.5 KB"`` (powers of 1024)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def _files(folder: Path) -> dict[str, os.stat_result]:
    return {p.name: p.stat() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def _last_used(stats: dict[str, os.stat_result]) -> float:
    """The latest change of any file, or access of an array (the manifest is read by listing
    itself, so its access time says nothing)."""
    return max(
        max(s.st_mtime, s.st_atime if name.endswith(".npy") else 0.0) for name, s in stats.items()
    )


def mapped_files(proc: Path = Path("/proc")) -> frozenset[str]:
    """Paths of the files the running processes have mapped, read once from
    ``/proc/<pid>/maps`` (Linux; the processes this user may see); empty elsewhere. A run
    reading a cache maps its arrays (:class:`~crystaltwins.data.cache.GraphCache` maps every
    array at open)."""
    paths: set[str] = set()
    if not proc.is_dir():
        return frozenset()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        for line in text.splitlines():
            fields = line.split(maxsplit=5)  # address perms offset device inode path
            if len(fields) == 6 and fields[5].startswith("/"):
                paths.add(fields[5])
    return frozenset(paths)


def mapped_by_a_process(folder: Path, mapped: frozenset[str] | None = None) -> bool:
    """Whether a running process has one of ``folder``'s files mapped (``mapped``: the result
    of :func:`mapped_files`, read now when not given)."""
    prefix = f"{folder.resolve()}/"
    return any(path.startswith(prefix) for path in (mapped_files() if mapped is None else mapped))


def _is_locked(folder: Path, mapped: frozenset[str] | None = None) -> bool:
    """Whether another process holds ``folder``'s lock (a build in progress) or reads the cache
    (:func:`mapped_by_a_process`); never waits."""
    if mapped_by_a_process(folder, mapped):
        return True
    path = sibling(folder, ".lock")
    if not path.exists():
        return False
    lock = FileLock(path, str(folder))
    try:
        lock.acquire(wait=False)
    except LockedError:
        return True
    except OSError:  # a read-only root: nobody can be building there
        return False
    lock.release()
    return False


def read_cache_entry(folder: Path, mapped: frozenset[str] | None = None) -> CacheEntry | None:
    """``folder`` described if it is a crystaltwins graph cache, else ``None`` (``mapped``: see
    :func:`mapped_by_a_process`)."""
    if not folder.is_dir() or folder.is_symlink() or not (folder / "manifest.json").is_file():
        return None
    try:
        check_cache_target(folder)  # a cache manifest and only the cache's own files
        manifest = json.loads((folder / "manifest.json").read_text())
        stats = _files(folder)
    except (OSError, ValueError):
        return None
    key = manifest.get("key", {})
    return CacheEntry(
        path=folder,
        size=sum(s.st_size for s in stats.values()),
        source=str(key.get("source", "?")),
        settings=dict(manifest.get("graph_settings") or key.get("graph_settings") or {}),
        crystals=int(manifest.get("crystals", 0)),
        created=str(manifest.get("created", "")),
        last_used=_last_used(stats),
        locked=_is_locked(folder, mapped),
    )


def list_caches(cache_root: str | os.PathLike | None = None) -> list[CacheEntry]:
    """The graph caches directly under ``cache_root`` (default: ``$CRYSTALTWINS_CACHE``), the
    least recently used first. Anything else there is ignored."""
    root = Path(cache_root) if cache_root else default_cache_root()
    if not root.is_dir():
        return []
    mapped = mapped_files()  # once for every entry
    entries = [read_cache_entry(p, mapped) for p in sorted(root.iterdir())]
    return sorted((e for e in entries if e is not None), key=lambda e: e.last_used)


def clean_caches(
    cache_root: str | os.PathLike | None = None,
    older_than_days: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
    log: Callable[[str], Any] | None = None,
) -> CleanReport:
    """Remove the graph caches under ``cache_root`` not used for ``older_than_days`` days (all,
    when ``None``); caches being built by another process are skipped.

    :param dry_run: only report what would be removed.
    """
    if older_than_days is not None and older_than_days < 0:
        raise ValueError(f"--older-than must be ≥ 0 days, got {older_than_days:g}")
    report = CleanReport(dry_run=dry_run)
    for entry in list_caches(cache_root):
        if older_than_days is not None and entry.age_days(now) < older_than_days:
            report.kept += 1
            continue
        if dry_run:
            (report.skipped_locked if entry.locked else report.removed).append(entry)
            continue
        if _remove(entry):
            report.removed.append(entry)
            if log is not None:
                log(f"removed {entry.path} ({human_size(entry.size)})")
        else:
            report.skipped_locked.append(entry)
    return report


def _remove(entry: CacheEntry) -> bool:
    """Remove one cache under its lock; ``False`` when another process holds the lock or has
    the cache open."""
    lock = FileLock(sibling(entry.path, ".lock"), str(entry.path))
    try:
        lock.acquire(wait=False)
    except LockedError:
        return False
    try:
        mapped = mapped_files()  # now, under the lock
        if read_cache_entry(entry.path, mapped) is None:  # changed since it was listed: leave it
            return False
        if mapped_by_a_process(entry.path, mapped):  # a run is reading it
            return False
        doomed = temporary_sibling(entry.path, "old")
        entry.path.rename(doomed)
        shutil.rmtree(doomed)
        remove_stale_temporaries(entry.path)
    finally:
        lock.release()
    return True
