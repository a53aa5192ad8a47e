"""The graph cache: crystal graphs of a data source, built once, memory-mapped for training.

Layout of a cache directory (all arrays ``.npy``, opened with ``mmap_mode="r"``)::

    manifest.json          version, source fingerprint, graph settings, featurizer, counts
    skipped.csv            entries that could not be used: id, source, reason
    ids.npy                (N,) str
    labels.npy             (N, L) float64, NaN where missing; column names in the manifest
    meta_<column>.npy      (N,) str, one per non-numeric column (formula, split, ...)
    atom_offsets.npy       (N + 1,) int64: crystal k's atoms are rows atom_offsets[k]:atom_offsets[k+1]
    atomic_numbers.npy     (A,) uint8
    positions.npy          (A, 3) float64, Å
    lattices.npy           (N, 3, 3) float64, Å
    edge_offsets.npy       (N + 1,) int64
    edge_src.npy, edge_dst.npy   (E,) int32, atom indices local to the crystal
    edge_image.npy         (E, 3) int16 (IMAGE_DTYPE)
    edge_distance.npy      (E,) float32, Å
    cand_offsets.npy, cand_src.npy, cand_dst.npy, cand_image.npy   candidate edges (see
                           :func:`crystaltwins.graph.neighbors.find_neighbors`)

A build writes chunks of 256 crystals to ``<cache>.partial/`` (each chunk atomically), then
assembles the arrays in a temporary directory and renames it into place: an interrupted build
leaves no corrupt cache, and a rerun reuses the finished chunks.

Safety: only a missing or empty folder, or a graph cache (its manifest and its own files), is
ever written or replaced (never the input data or a user's folder). One process builds a cache
at a time, holding an ``flock`` on ``<cache>.lock`` (released by the OS if it dies); others wait,
then reuse the finished cache. Temporary folders are named ``<cache>.tmp-<pid>-<random>``; those
of dead processes are removed by the next build.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crystaltwins.graph.crystal_graph import CrystalGraph, build_crystal_graph
from crystaltwins.graph.geometry import IMAGE_DTYPE
from crystaltwins.graph.neighbors import NeighborList
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.atomic import atomic_path, write_json_atomic
from crystaltwins.io.locks import (
    FileLock,
    remove_stale_temporaries,
    sibling,
    temporary_sibling,
)
from crystaltwins.io.records import BadRecord, CrystalInputError

# 2: neighbours in the reference (pymatgen kernel) order, ties included;
# 3: int16 image vectors (were int8, which wrapped for thin cells)
CACHE_VERSION = 3
CHUNK_SIZE = 256

_ATOM_ARRAYS = ("atomic_numbers", "positions")
_EDGE_ARRAYS = ("edge_src", "edge_dst", "edge_image", "edge_distance")
_CAND_ARRAYS = ("cand_src", "cand_dst", "cand_image")


#: Bytes read at a time when hashing a source (streaming: memory stays constant).
_HASH_BLOCK = 1 << 20


def _of_cache(path: Path, cache: Path) -> bool:
    """Whether ``path`` is inside the graph cache folder ``cache`` or one of the files our
    writers put beside it (its lock, partial build and temporaries)."""
    try:
        first = path.relative_to(cache.parent).parts[0]
    except (ValueError, IndexError):
        return False
    name = cache.name
    return first in (name, f"{name}.lock", f"{name}.partial") or (
        re.fullmatch(rf"{re.escape(name)}\.(tmp|old)-\d+-[0-9a-f]{{8}}", first) is not None
    )


def source_fingerprint(source: str | os.PathLike, exclude: Sequence[Path] = ()) -> str:
    """The SHA-256 of a file's content, or of a folder's files (relative paths and contents).

    Content, not sizes and modification times: an edited label whose file kept its size and
    time (``touch -r``, a copy with ``cp -p``) still changes the fingerprint. Read in 1 MiB
    blocks; about 0.2-0.5 s per 100 MB (``benchmarks/bench_fingerprint.py``). A folder's graph
    caches (``featurize cg --out cg/cache``: any subfolder with a cache manifest, and the
    folders in ``exclude``), with their locks and temporaries, are not part of its data.
    """
    path = Path(source).resolve()
    digest = hashlib.sha256()
    if path.is_file():
        files = [(path.name, path)]
    else:
        # The folder's own files only: the readers read no subfolder (notes, outputs or a
        # graph cache kept inside it change nothing), nor a cache's lock or temporaries.
        caches = [Path(e).resolve() for e in exclude]
        caches += [m.parent for m in path.glob("*/manifest.json") if is_cache_manifest(m)]
        files = [
            (p.name, p)
            for p in sorted(path.iterdir())
            if p.is_file() and not any(_of_cache(p, c) for c in caches)
        ]
    buffer = bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    for name, p in files:
        digest.update(f"{name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
    return digest.hexdigest()


@dataclass
class CacheSummary:
    """What a build made."""

    cache_dir: Path
    crystals: int
    skipped: list[BadRecord]
    atoms: int
    edges: int
    candidates: int
    bytes_on_disk: int
    seconds: float
    reused: bool = False
    #: what the folder held before this build replaced it (``None``: nothing)
    replaced: str | None = None

    def lines(self) -> list[str]:
        out = [
            f"cache: {self.cache_dir}" + (" (reused, up to date)" if self.reused else ""),
            *([f"replaced: {self.replaced}"] if self.replaced else []),
            f"crystals built: {self.crystals}",
            f"skipped: {len(self.skipped)}",
        ]
        reasons: dict[str, int] = {}
        for bad in self.skipped:
            key = bad.reason.split(":")[0][:80]
            reasons[key] = reasons.get(key, 0) + 1
        out += [f"  {n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
        if self.skipped:
            out.append(f"  list: {self.cache_dir / 'skipped.csv'}")
        out += [
            f"atoms: {self.atoms}",
            f"edges: {self.edges} (+ {self.candidates} candidate edges for exact perturbation)",
            f"bytes on disk: {self.bytes_on_disk} ({self.bytes_on_disk / 2**20:.1f} MiB)",
            f"time: {self.seconds:.1f} s",
        ]
        return out


# --------------------------------------------------------------------------------------------
# Building


def _graph_from_entry(
    entry: Any, settings: GraphSettings, supported: frozenset[int]
) -> CrystalGraph:
    from crystaltwins.io.readers import parse_entry

    record = parse_entry(entry)
    return build_crystal_graph(
        record.structure,
        settings,
        id=record.id,
        labels=record.labels,
        supports_element=supported.__contains__,
        source=record.source,
    )


def _build_chunk(job: tuple[list[Any], GraphSettings, frozenset[int]]) -> dict[str, Any]:
    """Worker: parse and build the graphs of one chunk of raw entries."""
    entries, settings, supported = job
    graphs: list[CrystalGraph] = []
    metadata: list[dict[str, str]] = []
    bad: list[list[str]] = []
    for entry in entries:
        try:
            graph = _graph_from_entry(entry, settings, supported)
        except CrystalInputError as error:
            bad.append([entry.id, entry.source, error.reason])
            continue
        except Exception as error:  # one bad crystal never stops a run
            bad.append([entry.id, entry.source, f"{type(error).__name__}: {error}"])
            continue
        graphs.append(graph)
        metadata.append(dict(entry.metadata))
    return _pack_chunk(graphs, metadata, bad)


def _build_and_write_chunk(partial: Path, index: int, job: Any) -> int:
    """Worker: build chunk ``index`` and write it; returns the number of entries handled."""
    chunk = _build_chunk(job)
    _write_chunk(partial, index, chunk)
    return len(chunk["info"]["ids"]) + len(chunk["info"]["bad"])


def _pack_chunk(
    graphs: list[CrystalGraph], metadata: list[dict[str, str]], bad: list[list[str]]
) -> dict[str, Any]:
    label_names = sorted({name for g in graphs for name in g.labels})
    labels = np.full((len(graphs), len(label_names)), np.nan)
    for row, graph in enumerate(graphs):
        for col, name in enumerate(label_names):
            labels[row, col] = graph.labels.get(name, np.nan)

    def cat(arrays: list[np.ndarray], dtype: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros((0, *shape), dtype)

    return {
        "arrays": {
            "atom_counts": np.array([g.num_atoms for g in graphs], dtype=np.int64),
            "edge_counts": np.array([len(g.edges) for g in graphs], dtype=np.int64),
            "cand_counts": np.array([len(g.candidates) for g in graphs], dtype=np.int64),
            "atomic_numbers": cat([g.atomic_numbers for g in graphs], np.uint8),
            "positions": cat([g.positions for g in graphs], np.float64, (3,)),
            "lattices": cat([g.lattice[None] for g in graphs], np.float64, (3, 3)),
            "edge_src": cat([g.edges.src for g in graphs], np.int32),
            "edge_dst": cat([g.edges.dst for g in graphs], np.int32),
            "edge_image": cat([g.edges.image for g in graphs], IMAGE_DTYPE, (3,)),
            "edge_distance": cat([g.edges.distance for g in graphs], np.float32),
            "cand_src": cat([g.candidates.src for g in graphs], np.int32),
            "cand_dst": cat([g.candidates.dst for g in graphs], np.int32),
            "cand_image": cat([g.candidates.image for g in graphs], IMAGE_DTYPE, (3,)),
            "labels": labels,
        },
        "info": {
            "ids": [g.id for g in graphs],
            "label_names": label_names,
            "metadata": metadata,
            "bad": bad,
        },
    }


def _write_chunk(partial: Path, index: int, chunk: dict[str, Any]) -> None:
    stem = partial / f"chunk_{index:06d}"
    try:
        with atomic_path(stem.with_suffix(".npz")) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **chunk["arrays"])
        # written last: marks the chunk done
        write_json_atomic(stem.with_suffix(".json"), chunk["info"], indent=None)
    except OSError as error:
        if error.filename is None:  # e.g. a full disk: say where
            raise OSError(error.errno, error.strerror, str(partial)) from error
        raise


def _chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _manifest_key(
    source: Path,
    settings: GraphSettings,
    elements: str,
    targets: Sequence[str],
    cif_column: str | None = None,
    id_key: str | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    key = {
        "version": CACHE_VERSION,
        "source": str(source),
        "source_fingerprint": source_fingerprint(source, [cache_dir] if cache_dir else []),
        "graph_settings": settings.cache_key(),
        "featurizer": {"supported_elements": elements},
        "targets": list(targets),
    }
    if cif_column is not None:  # absent by default: keys of existing caches stay valid
        key["cif_column"] = cif_column
    if id_key is not None:  # the same
        key["id_key"] = id_key
    return key


def supported_elements(featurizer: Any) -> frozenset[int]:
    """Atomic numbers ``featurizer`` has features for (every element 1-118 without one)."""
    if featurizer is None:
        return frozenset(range(1, 119))
    return frozenset(z for z in range(1, featurizer.table.shape[0]) if featurizer.supports(z))


def element_coverage(featurizer: Any) -> str:
    """What of ``featurizer`` a graph cache depends on: the elements it covers, as ranges
    (``"1-100"``, ``"1-83,89-94"``). A cache holds atomic numbers, not features, so element
    tables of the same coverage (CGCNN's ``atom_init.json``, a pre-trained model's copy of it,
    the built-in one) share one cache; crystals with an element outside it are skipped."""
    ranges: list[str] = []
    for z in sorted(supported_elements(featurizer)):
        if ranges and int(ranges[-1].split("-")[-1]) == z - 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{z}"
        else:
            ranges.append(str(z))
    return ",".join(ranges)


def build_graph_cache(
    source: str | os.PathLike,
    cache_dir: str | os.PathLike,
    settings: GraphSettings | None = None,
    featurizer: Any = None,
    targets: Sequence[str] | None = None,
    workers: int = 1,
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
    force: bool = False,
    cif_column: str | None = None,
    id_key: str | None = None,
) -> CacheSummary:
    """Build (or reuse) the graph cache of ``source``.

    :param source: any data source :func:`crystaltwins.io.readers.iter_entries` reads.
    :param cache_dir: where the cache lives; reused when its manifest matches the source
        fingerprint, the graph settings and the elements the featurizer covers, rebuilt
        otherwise.
    :param featurizer: an :class:`~crystaltwins.graph.atom_features.AtomFeaturizer`; crystals
        with an element it has no features for are skipped.
    :param targets: label columns that must be present and numeric (others are kept when present).
    :param workers: processes building graphs in parallel.
    :param cif_column: the structure column of a CSV source (default ``cif`` / ``structure``).
    :param id_key: the ``Atoms.info`` key holding each frame's id in an extxyz / ASE database /
        multi-frame source (default: detected, see :func:`~crystaltwins.io.readers.iter_entries`).
    """
    from crystaltwins.io.readers import iter_entries

    start = time.perf_counter()
    settings = settings or GraphSettings()
    source = Path(source).resolve()
    cache_dir = Path(cache_dir)
    if not source.exists():  # before any lock or folder is made for it
        raise CrystalInputError(str(source), "no such file or folder")
    with contextlib.suppress(FileNotFoundError):  # another build swapping it: checked again below
        check_cache_target(cache_dir, source)
    supported = supported_elements(featurizer)
    key = _manifest_key(
        source, settings, element_coverage(featurizer), targets or [], cif_column, id_key, cache_dir
    )
    if not force and (reused := _reusable(cache_dir, key, start)) is not None:
        return reused
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    # One builder per cache at a time: a second process waits here, then reuses the cache.
    with FileLock(sibling(cache_dir, ".lock"), str(cache_dir)):
        check_cache_target(cache_dir, source)
        remove_stale_temporaries(cache_dir)
        partial = sibling(cache_dir, ".partial")
        _check_partial(partial)  # a user's folder of that name is refused, never removed
        if not force and (reused := _reusable(cache_dir, key, start)) is not None:
            if (partial / "key.json").exists():
                shutil.rmtree(partial)  # left by a build killed after its last rename
            return reused
        replaced = _replaced_cache(cache_dir, key)
        built = _build_locked(
            source,
            cache_dir,
            partial,
            key,
            settings,
            supported,
            targets,
            workers,
            chunk_size,
            progress,
            start,
            iter_entries,
            cif_column,
            id_key,
        )
        return dataclasses.replace(built, replaced=replaced)


def _replaced_cache(cache_dir: Path, key: dict[str, Any]) -> str | None:
    """What the cache in ``cache_dir`` (about to be rebuilt for ``key``) was, for the summary."""
    try:
        old = json.loads((cache_dir / "manifest.json").read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if old.get("source") != key["source"]:
        return f"the graph cache of {old.get('source')}"
    return "the earlier graph cache of this data (its contents or the settings changed)"


def _reusable(cache_dir: Path, key: dict[str, Any], start: float) -> CacheSummary | None:
    """The summary of ``cache_dir`` if it is a finished cache of ``key``."""
    try:  # read once, no exists() first: another process may be swapping the folder
        manifest = json.loads((cache_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    try:
        return _summary(cache_dir, manifest, time.perf_counter() - start, reused=True)
    except OSError:  # swapped while being read: the locked check decides
        return None


#: What a cache folder holds besides its ``.npy`` arrays.
_CACHE_FILES = frozenset(
    {"manifest.json", "skipped.csv"}
    | {
        f"{name}.npy"
        for name in (
            "ids",
            "labels",
            "lattices",
            "atom_offsets",
            "edge_offsets",
            "cand_offsets",
            *_ATOM_ARRAYS,
            *_EDGE_ARRAYS,
            *_CAND_ARRAYS,
        )
    }
)


def is_cache_manifest(path: Path) -> bool:
    """Whether ``path`` is a graph cache's ``manifest.json`` (not any file of that name)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("key"), dict)
        and ("source_fingerprint" in manifest["key"])
    )


def check_cache_target(cache_dir: Path, source: Path | None = None) -> None:
    """Refuse (``ValueError``, nothing touched) a cache folder that may hold a user's files.

    Only a missing or empty folder, or one holding a crystaltwins graph cache (a cache manifest
    and the cache's own files only), may be written; never the input data or a folder holding it.
    """
    hint = "nothing was changed; give a new or empty folder (or an existing graph cache)"
    if source is not None:
        resolved = cache_dir.resolve()
        if resolved == source or resolved in source.parents:
            raise ValueError(f"{cache_dir}: is the input data (or holds it); {hint}")
    if cache_dir.is_symlink():  # its rebuild would replace the link, and strand the cache
        raise ValueError(
            f"{cache_dir}: is a symbolic link; give the folder it points to "
            f"({os.path.realpath(cache_dir)}); nothing was changed"
        )
    if not cache_dir.exists():
        return
    if not cache_dir.is_dir():
        raise ValueError(f"{cache_dir}: exists and is not a folder; {hint}")
    entries = [p.name for p in cache_dir.iterdir()]
    if not entries:
        return
    if not is_cache_manifest(cache_dir / "manifest.json"):
        raise ValueError(
            f"{cache_dir}: folder is not a crystaltwins graph cache (no cache manifest.json); {hint}"
        )
    foreign = sorted(
        n
        for n in entries
        if n not in _CACHE_FILES
        and not (n.startswith("meta_") and n.endswith(".npy"))
        and not n.startswith(".manifest.tmp-")  # being written by another process
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"{cache_dir}: graph cache folder also holds other files ({shown}); {hint}"
        )


#: A metadata column name that is its file's name as it is (others are named by a hash).
_PLAIN_COLUMN = re.compile(r"[A-Za-z0-9_.+\- ]{1,100}")


def metadata_file(name: str) -> str:
    """The file of metadata column ``name`` in a cache: ``meta_<name>.npy``, or, for a name
    that cannot be a file name as it is (``space group/symbol``, a very long one), one named
    by its SHA-1."""
    if _PLAIN_COLUMN.fullmatch(name) and name not in (".", ".."):
        return f"meta_{name}.npy"
    return f"meta_sha1-{hashlib.sha1(name.encode('utf-8')).hexdigest()}.npy"


def _check_partial(partial: Path) -> None:
    """Refuse a ``.partial`` folder that is not a crystaltwins build's."""
    if not partial.exists():
        return
    ours = partial.is_dir() and all(
        p.name.startswith(("key.json", "chunk_", ".key.tmp-", ".chunk_")) for p in partial.iterdir()
    )
    if not ours:
        raise ValueError(
            f"{partial}: exists and is not an unfinished crystaltwins cache build; "
            "nothing was changed; move it away or give another --out"
        )


def _ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the main process (which stops them): no tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _build_locked(
    source: Path,
    cache_dir: Path,
    partial: Path,
    key: dict[str, Any],
    settings: GraphSettings,
    supported: frozenset[int],
    targets: Sequence[str] | None,
    workers: int,
    chunk_size: int,
    progress: bool,
    start: float,
    iter_entries: Any,
    cif_column: str | None,
    id_key: str | None = None,
) -> CacheSummary:
    """Build the cache while holding its lock and after :func:`_check_partial` (see
    :func:`build_graph_cache`)."""
    # Errors about the whole source (no CIF column, unknown format, ...) surface here, when the
    # first entry is read, before anything is written for it.
    entries = iter_entries(source, targets=targets, cif_column=cif_column, id_key=id_key)
    first = next(entries, None)
    entries = itertools.chain([] if first is None else [first], entries)
    key_file = partial / "key.json"
    # Finished chunks are matched by their index: a build resumed with another chunk size
    # would drop or repeat crystals, so the chunk size is part of what must match.
    partial_key = {**key, "chunk_size": chunk_size}
    if partial.exists() and (
        not key_file.exists() or json.loads(key_file.read_text()) != partial_key
    ):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob(".chunk_*.tmp-*"):  # of a killed build (we hold the lock)
        stale.unlink(missing_ok=True)
    write_json_atomic(key_file, partial_key)

    done = {int(p.stem.split("_")[1]) for p in partial.glob("chunk_*.json")}
    jobs = (
        (index, (chunk, settings, supported))
        for index, chunk in enumerate(_chunks(entries, chunk_size))
    )
    pending = ((i, job) for i, job in jobs if i not in done)

    bar = _progress_bar(progress, f"featurize {source.name}")
    if bar is not None:
        bar.update(len(done) * chunk_size)

    def advance(count: int) -> None:
        if bar is not None:
            bar.update(count)

    if workers > 1:
        # Entries are read in this thread (so a reading error surfaces here); the workers
        # build and write their chunks themselves (no arrays sent back); at most
        # 2 x workers chunks in flight. A worker that dies (out of memory, a crash in a
        # library) breaks the executor: the build stops with one line, its finished chunks kept.
        context = mp.get_context("fork" if os.name == "posix" else "spawn")
        executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_interrupts)
        finished = False
        try:
            window: deque[Any] = deque()
            for i, job in pending:
                window.append(executor.submit(_build_and_write_chunk, partial, i, job))
                while len(window) >= 2 * workers:
                    advance(window.popleft().result())
            while window:
                advance(window.popleft().result())
            finished = True
        except BrokenProcessPool:
            raise ValueError(
                f"{source}: a process building graphs stopped abruptly (out of memory, or a "
                "crash on one crystal); the chunks finished so far are kept: run again to "
                "continue, with fewer workers (--workers 1 shows the crystal it stops at)"
            ) from None
        finally:
            if not finished:  # Ctrl-C, an error: stop the workers now, not after their chunks
                for process in list((getattr(executor, "_processes", None) or {}).values()):
                    process.terminate()
            executor.shutdown(wait=True, cancel_futures=True)
    else:
        for i, job in pending:
            chunk = _build_chunk(job)
            _write_chunk(partial, i, chunk)
            advance(len(chunk["info"]["ids"]) + len(chunk["info"]["bad"]))
    if bar is not None:
        bar.close()

    manifest = _assemble(partial, cache_dir, key, settings, start)
    shutil.rmtree(partial)
    return _summary(cache_dir, manifest, manifest["build_seconds"], reused=False)


def _progress_bar(enabled: bool, description: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=description, unit="crystal", dynamic_ncols=True)


def _assemble(
    partial: Path, cache_dir: Path, key: dict[str, Any], settings: GraphSettings, start: float
) -> dict[str, Any]:
    """Concatenate the chunks into the cache's arrays, streaming, then rename into place (its
    manifest final before: ``build_seconds`` counted from ``start``, ``time.perf_counter()``)."""
    chunk_files = sorted(partial.glob("chunk_*.npz"))
    infos = [json.loads(p.with_suffix(".json").read_text()) for p in chunk_files]
    label_names = sorted({n for info in infos for n in info["label_names"]})
    meta_names = sorted({k for info in infos for m in info["metadata"] for k in m})
    counts = {name: [] for name in ("atom_counts", "edge_counts", "cand_counts")}
    for path in chunk_files:
        with np.load(path) as data:
            for name in counts:
                counts[name].append(data[name])
    atom_counts = np.concatenate(counts["atom_counts"]) if chunk_files else np.zeros(0, np.int64)
    edge_counts = np.concatenate(counts["edge_counts"]) if chunk_files else np.zeros(0, np.int64)
    cand_counts = np.concatenate(counts["cand_counts"]) if chunk_files else np.zeros(0, np.int64)
    tmp = temporary_sibling(cache_dir, "tmp")
    tmp.mkdir(parents=True)
    try:
        manifest = _write_arrays(
            tmp,
            chunk_files,
            infos,
            label_names,
            meta_names,
            counts_all=(atom_counts, edge_counts, cand_counts),
            key=key,
            settings=settings,
            start=start,
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: never a half-written cache
        raise
    try:  # again: a file put into the folder while it was built is a user's, never replaced
        check_cache_target(cache_dir)
    except ValueError as changed:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"{str(changed).split('; nothing was changed')[0]}, which it was not when the build "
            "started; nothing in it was changed; the graphs built are kept: move those files "
            "out and run again to finish in seconds (or give another folder)"
        ) from None
    old = temporary_sibling(cache_dir, "old")
    if cache_dir.exists():
        os.replace(cache_dir, old)
    os.replace(tmp, cache_dir)
    if old.exists():
        shutil.rmtree(old)
    return manifest


def _write_arrays(
    tmp: Path,
    chunk_files: list[Path],
    infos: list[dict[str, Any]],
    label_names: list[str],
    meta_names: list[str],
    counts_all: tuple[np.ndarray, np.ndarray, np.ndarray],
    key: dict[str, Any],
    settings: GraphSettings,
    start: float,
) -> dict[str, Any]:
    """Write the concatenated arrays and the manifest into ``tmp``; returns the manifest."""
    atom_counts, edge_counts, cand_counts = counts_all
    n, n_atoms, n_edges, n_cands = (
        len(atom_counts),
        int(atom_counts.sum()),
        int(edge_counts.sum()),
        int(cand_counts.sum()),
    )

    def offsets(c: np.ndarray) -> np.ndarray:
        out = np.zeros(len(c) + 1, dtype=np.int64)
        np.cumsum(c, out=out[1:])
        return out

    np.save(tmp / "atom_offsets.npy", offsets(atom_counts))
    np.save(tmp / "edge_offsets.npy", offsets(edge_counts))
    np.save(tmp / "cand_offsets.npy", offsets(cand_counts))
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {
        "atomic_numbers": ((n_atoms,), np.uint8),
        "positions": ((n_atoms, 3), np.float64),
        "lattices": ((n, 3, 3), np.float64),
        "edge_src": ((n_edges,), np.int32),
        "edge_dst": ((n_edges,), np.int32),
        "edge_image": ((n_edges, 3), IMAGE_DTYPE),
        "edge_distance": ((n_edges,), np.float32),
        "cand_src": ((n_cands,), np.int32),
        "cand_dst": ((n_cands,), np.int32),
        "cand_image": ((n_cands, 3), IMAGE_DTYPE),
        "labels": ((n, len(label_names)), np.float64),
    }
    outputs = {
        name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        for name, (shape, dtype) in shapes.items()
    }
    position = dict.fromkeys(shapes, 0)
    for path, info in zip(chunk_files, infos, strict=True):
        with np.load(path) as data:
            for name, out in outputs.items():
                block = data[name]
                if name == "labels":
                    cols = [label_names.index(c) for c in info["label_names"]]
                    full = np.full((block.shape[0], len(label_names)), np.nan)
                    full[:, cols] = block
                    block = full
                out[position[name] : position[name] + len(block)] = block
                position[name] += len(block)
    for out in outputs.values():
        out.flush()
    del outputs

    ids = [i for info in infos for i in info["ids"]]
    np.save(tmp / "ids.npy", np.array(ids, dtype=str) if ids else np.zeros(0, dtype="<U1"))
    for name in meta_names:
        values = [m.get(name, "") for info in infos for m in info["metadata"]]
        np.save(tmp / metadata_file(name), np.array(values, dtype=str))
    bad = [b for info in infos for b in info["bad"]]
    with open(tmp / "skipped.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "source", "reason"])
        writer.writerows(bad)

    manifest = {
        "key": key,
        "version": CACHE_VERSION,
        "graph_settings": settings.to_dict(),
        "crystals": n,
        "atoms": n_atoms,
        "edges": n_edges,
        "candidates": n_cands,
        "skipped": len(bad),
        "label_names": label_names,
        "metadata_names": meta_names,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": time.perf_counter() - start,
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def _summary(
    cache_dir: Path, manifest: dict[str, Any], seconds: float, reused: bool
) -> CacheSummary:
    skipped = []
    skipped_file = cache_dir / "skipped.csv"
    if skipped_file.exists():
        with open(skipped_file, newline="") as handle:
            skipped = [BadRecord(r["id"], r["source"], r["reason"]) for r in csv.DictReader(handle)]
    size = sum(p.stat().st_size for p in cache_dir.iterdir() if p.is_file())
    return CacheSummary(
        cache_dir=cache_dir,
        crystals=manifest["crystals"],
        skipped=skipped,
        atoms=manifest["atoms"],
        edges=manifest["edges"],
        candidates=manifest["candidates"],
        bytes_on_disk=size,
        seconds=seconds,
        reused=reused,
    )


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class GraphCache:
    """Read access to a built cache: every array memory-mapped when it is opened.

    Opening reads the ids and offsets (small, ``(N + 1,)``) and maps the rest. The maps
    keep the data they opened even if another run rebuilds or cleans the cache meanwhile (the
    folder is swapped, never written in place). Safe to pass to data-loader workers: the maps
    are reopened after pickling, and a cache rebuilt in between is refused, never mixed.
    """

    cache_dir: Path
    manifest: dict[str, Any] = field(init=False)
    _arrays: dict[str, np.ndarray] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        manifest_path = self.cache_dir / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.cache_dir}: not a graph cache (no manifest.json)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("version") != CACHE_VERSION:
            raise ValueError(
                f"{self.cache_dir}: cache version {self.manifest.get('version')} != {CACHE_VERSION}; rebuild it"
            )
        self._open_all()

    def _open_all(self) -> None:
        """Map every array now, and check they belong to the manifest read (a rebuild by
        another process between the two is refused with one line)."""
        damage = None
        try:
            for path in sorted(self.cache_dir.glob("*.npy")):
                self.array(path.stem)
        except (OSError, ValueError) as error:
            damage = error
        try:
            current = json.loads((self.cache_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            current = None
        if current != self.manifest:
            self._arrays = {}
            raise RuntimeError(
                f"{self.cache_dir}: the graph cache was rebuilt or removed by another run while "
                "this one was opening it; run again"
            )
        if damage is not None:
            self._arrays = {}
            raise ValueError(
                f"{self.cache_dir}: damaged graph cache ({type(damage).__name__}: {damage}); "
                "remove it (crystaltwins cache clean) or rebuild it (featurize --force)"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cache_dir = state["cache_dir"]
        self.manifest = state["manifest"]
        self._arrays = {}
        self._open_all()

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped array ``name`` (see the module docstring)."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = np.load(self.cache_dir / f"{name}.npy", mmap_mode="r")
            if name.endswith("offsets") or name in ("ids",):
                arr = np.array(arr)  # small: (N + 1,) read once
            else:
                # A plain ndarray view of the same mapping: slicing np.memmap is ~10x slower.
                arr = arr.view(np.ndarray)
            self._arrays[name] = arr
        return arr

    def __len__(self) -> int:
        return int(self.manifest["crystals"])

    @property
    def settings(self) -> GraphSettings:
        return GraphSettings.from_dict(self.manifest["graph_settings"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def ids(self) -> np.ndarray:
        return self.array("ids")

    def skipped_ids(self) -> set[str]:
        """The ids of the source's entries that could not be used (``skipped.csv``)."""
        path = self.cache_dir / "skipped.csv"
        if not path.exists():
            return set()
        with open(path, newline="") as handle:
            return {row["id"] for row in csv.DictReader(handle)}

    @property
    def source_name(self) -> str:
        """The data the cache was built from (for messages), else the cache folder."""
        return str(self.manifest.get("source") or self.cache_dir)

    def labels(self, names: Sequence[str] | None = None) -> np.ndarray:
        """``(N, len(names))`` float64 labels (NaN where missing)."""
        table = self.array("labels")
        if names is None:
            return np.asarray(table)
        missing = [n for n in names if n not in self.label_names]
        if missing:
            raise KeyError(
                f"{self.source_name}: no label column {missing}; available: {self.label_names}"
            )
        return np.asarray(table[:, [self.label_names.index(n) for n in names]])

    def metadata(self, name: str) -> np.ndarray:
        if name not in self.manifest["metadata_names"]:
            available = sorted({*self.manifest["metadata_names"], *self.label_names})
            raise KeyError(f"{self.source_name}: no column {name!r}; available: {available}")
        return self.array(metadata_file(name).removesuffix(".npy"))

    def graph(self, index: int) -> CrystalGraph:
        """Crystal ``index`` as a :class:`CrystalGraph` (views into the memory maps)."""
        a0, a1 = self.array("atom_offsets")[index : index + 2]
        e0, e1 = self.array("edge_offsets")[index : index + 2]
        c0, c1 = self.array("cand_offsets")[index : index + 2]
        labels = dict(zip(self.label_names, self.array("labels")[index].tolist(), strict=True))
        return CrystalGraph(
            id=str(self.ids[index]),
            atomic_numbers=self.array("atomic_numbers")[a0:a1],
            positions=self.array("positions")[a0:a1],
            lattice=self.array("lattices")[index],
            edges=NeighborList(
                self.array("edge_src")[e0:e1],
                self.array("edge_dst")[e0:e1],
                self.array("edge_image")[e0:e1],
                self.array("edge_distance")[e0:e1],
            ),
            candidates=NeighborList(
                self.array("cand_src")[c0:c1],
                self.array("cand_dst")[c0:c1],
                self.array("cand_image")[c0:c1],
                np.zeros(c1 - c0),
            ),
            labels=labels,
        )
