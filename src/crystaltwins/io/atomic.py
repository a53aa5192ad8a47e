"""Atomic file writes: write a unique temporary beside the target, then rename it onto the target.

A reader never sees a half-written file; a write that fails or is interrupted leaves the earlier
file (if any) as it was and removes its temporary; two processes writing the same file never
share a temporary (the last rename wins, whole). Every file crystaltwins writes goes through
:func:`atomic_path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crystaltwins.io.locks import NAME_MAX


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh hidden temporary beside ``path``: ``.<stem>.tmp-<pid>-<random><suffix>``.

    The suffix is kept, so writers that choose the format by it (Matplotlib, NumPy) write the
    target's format; a name too long for the file system is shortened to a hash of it.
    """
    path = Path(path)
    tag = f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
    name = f".{path.stem}{tag}{path.suffix}"
    if len(name.encode()) > NAME_MAX:
        digest = hashlib.sha256(path.name.encode()).hexdigest()[:16]
        name = f".{path.stem[:100]}-{digest}{tag}{path.suffix[:20]}"
    return path.with_name(name)


@contextmanager
def atomic_path(path: str | os.PathLike, *, make_parent: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on leaving the block without an
    error, it replaces ``path`` in one rename; on an error (``KeyboardInterrupt`` included) it
    is removed and ``path`` is left untouched.

    >>> with atomic_path(out / "table.csv") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("id,value\\n")
    """
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(data, indent=indent))
