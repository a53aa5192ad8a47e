"""File locks between real processes, long names, temporaries of dead processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crystaltwins.io.locks import (
    FileLock,
    LockedError,
    pid_alive,
    remove_stale_temporaries,
    sibling,
    temporary_sibling,
)

REPO = Path(__file__).resolve().parents[2]


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the lock on ``path`` until it is killed."""
    code = (
        "import sys, time\n"
        "from crystaltwins.io.locks import FileLock\n"
        "lock = FileLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


def test_lock_of_another_process_refuses_then_goes_with_it_when_killed(tmp_path):
    path = tmp_path / "x.lock"
    holder = hold_lock(path)
    try:
        with pytest.raises(
            LockedError, match=rf"in use by another crystaltwins run \(process {holder.pid}\)"
        ):
            FileLock(path, "x").acquire(wait=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = FileLock(path).acquire(wait=False)  # kill -9 released it
    assert lock.held
    lock.release()


def test_waiting_lock_is_granted_when_the_holder_ends(tmp_path):
    path = tmp_path / "x.lock"
    holder = hold_lock(path)
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
    with FileLock(path):
        waited = time.monotonic() - started
    holder.wait()
    assert waited >= 0.9


def test_long_names_are_shortened_with_a_hash(tmp_path):
    long = tmp_path / ("a" * 250)
    assert sibling(tmp_path / "c", ".lock").name == "c.lock"
    for suffix in (".lock", ".partial"):
        name = sibling(long, suffix).name
        assert len(name) <= 255 and name.endswith(suffix) and name.startswith("a" * 100)
    assert sibling(long, ".lock") != sibling(tmp_path / ("a" * 249 + "b"), ".lock")
    temporary_sibling(long).mkdir()  # the file system takes it


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    cache = tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    stale = tmp_path / f"cache.tmp-{dead.pid}-0a1b2c3d"
    stale_old = tmp_path / f"cache.old-{dead.pid}-deadbeef"
    mine = temporary_sibling(cache)
    user = tmp_path / "cache.tmp-notes"
    other = tmp_path / f"cachex.tmp-{dead.pid}-0a1b2c3d"
    # A user's folders that only look like ours (a number where the process id goes):
    # never removed, whatever they hold.
    user_year = tmp_path / f"cache.old-{dead.pid}"
    user_tagged = tmp_path / f"cache.tmp-{dead.pid}-final"
    for folder in (stale, stale_old, mine, user, other, user_year, user_tagged):
        folder.mkdir()
        (folder / "f.npy").write_bytes(b"x")
    assert sorted(remove_stale_temporaries(cache)) == sorted([stale, stale_old])
    for kept in (mine, user, other, user_year, user_tagged):
        assert (kept / "f.npy").exists()


def test_a_waiting_lock_never_ends_up_on_a_removed_lock_file(tmp_path):
    """The holder removes the lock file as it releases it (a failed start cleaning up): the
    process that was waiting must lock the file now at the path, so that a third one is
    refused; a lock on the removed file would let both run."""
    import threading

    path = tmp_path / "run.lock"
    first = FileLock(path).acquire()
    waiting = FileLock(path)
    thread = threading.Thread(target=waiting.acquire)
    thread.start()
    time.sleep(0.3)  # the thread is blocked in flock on the first file
    first.release_and_remove()
    thread.join(timeout=10)
    assert waiting.held and path.exists()
    with pytest.raises(LockedError):
        FileLock(path).acquire(wait=False)
    waiting.release()
