"""From data sources to graph caches: where caches live and how several sources combine."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystaltwins.data.cache import (
    CacheSummary,
    GraphCache,
    build_graph_cache,
    element_coverage,
    is_cache_manifest,
)
from crystaltwins.graph.settings import GraphSettings


def default_cache_root() -> Path:
    """``$CRYSTALTWINS_CACHE``, else ``~/.cache/crystaltwins``."""
    return Path(os.environ.get("CRYSTALTWINS_CACHE", Path.home() / ".cache" / "crystaltwins"))


def cache_dir_for(
    source: str | os.PathLike,
    settings: GraphSettings,
    featurizer: Any = None,
    cache_root: str | os.PathLike | None = None,
    cif_column: str | None = None,
    id_key: str | None = None,
) -> Path:
    """A cache directory named after the source (its first 64 characters), one per (source path,
    settings, elements the featurizer covers, CIF column, id key)."""
    source = Path(source).resolve()
    settings_key = sorted(settings.cache_key().items())
    key = f"{source}|{settings_key}|elements={element_coverage(featurizer)}"
    if cif_column is not None:
        key += f"|cif_column={cif_column}"
    if id_key is not None:
        key += f"|id_key={id_key}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = source.name.split(".")[0][:64] or "data"  # the digest keeps long names apart
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
    cif_column: str | None = None,
    id_key: str | None = None,
) -> list[GraphCache]:
    """Build (or reuse) the graph cache of every source and open them.

    A source that is itself a graph cache folder (``crystaltwins featurize DATA --out DIR``) is
    opened as it is, after checking that it was built with the same graph settings and element
    features.
    """
    settings = settings or GraphSettings()
    caches = []
    for source in sources:
        built = open_built_cache(source, settings, featurizer)
        if built is not None:
            if log is not None:
                skipped = int(built.manifest.get("skipped", 0))
                log(f"{source}: {len(built)} crystals (graph cache), {skipped} skipped")
            caches.append(built)
            continue
        summary: CacheSummary = build_graph_cache(
            source,
            cache_dir_for(source, settings, featurizer, cache_root, cif_column, id_key),
            settings=settings,
            featurizer=featurizer,
            targets=targets,
            workers=workers,
            progress=progress,
            cif_column=cif_column,
            id_key=id_key,
        )
        if log is not None:
            state = "reused" if summary.reused else f"built in {summary.seconds:.1f} s"
            log(
                f"{source}: {summary.crystals} crystals ({state}), {len(summary.skipped)} skipped"
                + (f" -> {summary.cache_dir / 'skipped.csv'}" if summary.skipped else "")
            )
        caches.append(GraphCache(summary.cache_dir))
    return caches


def open_built_cache(
    source: str | os.PathLike, settings: GraphSettings, featurizer: Any = None
) -> GraphCache | None:
    """``source`` opened as a graph cache if it is one (``None`` otherwise).

    :raises ValueError: a cache built with other graph settings, or holding elements that
        ``featurizer`` has no features for.
    """
    path = Path(source)
    if not (path.is_dir() and is_cache_manifest(path / "manifest.json")):
        return None  # a data folder may hold a manifest.json of its own
    cache = GraphCache(path)
    key = cache.manifest.get("key", {})
    wanted = json.loads(json.dumps(settings.cache_key()))
    if key.get("graph_settings") != wanted:
        raise ValueError(
            f"{path}: graph cache built with settings {key.get('graph_settings')}, this run "
            f"needs {wanted}; rebuild it (crystaltwins featurize) or give the original data"
        )
    built_with = key.get("featurizer", {}).get("supported_elements")
    if featurizer is not None and built_with != element_coverage(featurizer):
        # The cache holds atomic numbers, not features: any table covering its elements works.
        elements = np.unique(cache.array("atomic_numbers"))
        missing = [int(z) for z in elements if z > 0 and not featurizer.supports(int(z))]
        if missing:
            raise ValueError(
                f"{path}: graph cache has elements {missing} (atomic numbers) that the element "
                f"features {featurizer.name!r} of this run do not cover"
            )
    return cache
