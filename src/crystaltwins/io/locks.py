"""Inter-process file locks and the names of temporary files, for caches and run folders.

Locks are POSIX ``flock`` locks on a small lock file: the operating system releases them when
the process holding them ends, however it ends (``kill -9`` included), so a crashed run never
leaves a folder locked.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no inter-process locking
    fcntl = None  # type: ignore[assignment]

#: Longest file name most file systems accept (bytes).
NAME_MAX = 255


class LockedError(ValueError):
    """Another process holds the lock (a user-facing error: the CLI prints one line)."""


class FileLock:
    """An exclusive lock on ``path`` (created if missing; :meth:`release_and_remove` deletes it).

    ``acquire(wait=True)`` blocks until the lock is free; ``wait=False`` raises
    :class:`LockedError` at once. Usable as a context manager (waits).
    """

    def __init__(self, path: str | os.PathLike, what: str = "") -> None:
        self.path = Path(path)
        self.what = what or str(self.path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool = True) -> FileLock:
        if self._fd is not None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    holder = _read_pid(self.path)
                    by = f" (process {holder})" if holder else ""
                    raise LockedError(
                        f"{self.what}: in use by another crystaltwins run{by}"
                    ) from None
                raise
            if _same_file(fd, self.path):
                break
            # The holder removed the lock file while we waited: our lock is on a file nobody
            # else can see any more. Lock the one now at the path.
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def release_and_remove(self) -> None:
        """Delete the lock file, then release: a process waiting for it then finds it gone
        (see :meth:`acquire`) and locks a new one, never the deleted file."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
        self.release()

    def __enter__(self) -> FileLock:
        return self.acquire(wait=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sibling(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` added to its name; a name that would be too long for the file
    system is shortened to its first 100 characters and a hash of the whole."""
    name = path.name + suffix
    if len(name.encode()) <= NAME_MAX:
        return path.with_name(name)
    digest = hashlib.sha256(path.name.encode()).hexdigest()[:16]
    return path.with_name(f"{path.name[:100]}-{digest}{suffix}")


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """A fresh temporary name beside ``path``: ``<name>.<kind>-<pid>-<random>``."""
    return sibling(path, f".{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_temporaries(path: Path, kinds: tuple[str, ...] = ("tmp", "old")) -> list[Path]:
    """Remove the temporaries of ``path`` (see :func:`temporary_sibling`) whose process is gone.

    Call it while holding the lock that guards ``path``. Returns what was removed.
    """
    digest = hashlib.sha256(path.name.encode()).hexdigest()[:16]
    stems = "|".join(re.escape(s) for s in (path.name, f"{path.name[:100]}-{digest}"))
    # Only the exact names temporary_sibling makes (pid and 8 hex digits): a user's
    # ``<name>.old-2023`` is never taken for one.
    pattern = re.compile(rf"^({stems})\.({'|'.join(kinds)})-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        match = pattern.match(candidate.name)
        if match is None or pid_alive(int(match.group(3))):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed
