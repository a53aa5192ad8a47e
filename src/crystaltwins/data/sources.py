"""From data sources to graph caches: where caches live and how several sources combine."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crystaltwins.data.cache import CacheSummary, GraphCache, build_graph_cache
from crystaltwins.graph.settings import GraphSettings


def default_cache_root() -> Path:
    """``$CRYSTALTWINS_CACHE``, else ``~/.cache/crystaltwins``."""
    return Path(os.environ.get("CRYSTALTWINS_CACHE", Path.home() / ".cache" / "crystaltwins"))


def cache_dir_for(
    source: str | os.PathLike,
    settings: GraphSettings,
    featurizer: Any = None,
    cache_root: str | os.PathLike | None = None,
) -> Path:
    """A cache directory named after the source, one per (source path, settings, featurizer)."""
    source = Path(source).resolve()
    key = f"{source}|{sorted(settings.cache_key().items())}|{featurizer.fingerprint() if featurizer else ''}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = source.name.split(".")[0] or "data"
    return Path(cache_root or default_cache_root()) / f"{stem}-{digest}"


def prepare_caches(
    sources: Sequence[str | os.PathLike],
    settings: GraphSettings | None = None,
    featurizer: Any = None,
    cache_root: str | os.PathLike | None = None,
    targets: Sequence[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Any = print,
) -> list[GraphCache]:
    """Build (or reuse) the graph cache of every source and open them."""
    settings = settings or GraphSettings()
    caches = []
    for source in sources:
        summary: CacheSummary = build_graph_cache(
            source,
            cache_dir_for(source, settings, featurizer, cache_root),
            settings=settings,
            featurizer=featurizer,
            targets=targets,
            workers=workers,
            progress=progress,
        )
        if log is not None:
            state = "reused" if summary.reused else f"built in {summary.seconds:.1f} s"
            log(
                f"{source}: {summary.crystals} crystals ({state}), {len(summary.skipped)} skipped"
                + (f" -> {summary.cache_dir / 'skipped.csv'}" if summary.skipped else "")
            )
        caches.append(GraphCache(summary.cache_dir))
    return caches
