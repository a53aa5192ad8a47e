"""A 2-D map of crystal embeddings coloured by a property (paper Fig. 3), from an
``embeddings.npz`` or from a model and data: ``map.png`` and its coordinates ``map.csv``."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crystaltwins.evaluation.plots import check_map_output, embedding_map, reduce_2d


@dataclass
class EmbeddingMap:
    """What :func:`draw_embedding_map` wrote: the picture, its coordinates file, the crystals."""

    image: Path
    coordinates: Path
    count: int


def draw_embedding_map(
    source: str | os.PathLike | Any,
    out: str | os.PathLike,
    data: Any = None,
    method: str = "tsne",
    color: str | None = None,
    seed: int = 0,
    cif_column: str | None = None,
) -> EmbeddingMap:
    """Reduce embeddings to 2-D (``tsne``, ``umap`` or ``pca``) and draw them, coloured by the
    label ``color`` (default: the first one).

    :param source: an ``embeddings.npz``, or a model (file, run folder or loaded) to embed ``data``.
    :param out: the picture (``.png``); the coordinates go beside it as ``.csv``.
    """
    check_map_output(out)  # before any work
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".npz":
        with np.load(source) as arrays:
            ids, vectors = arrays["ids"], arrays["embeddings"]
            labels = {k[len("label_") :]: arrays[k] for k in arrays.files if k.startswith("label_")}
    else:
        if data is None:
            raise ValueError("give --data DATA when SOURCE is a model")
        from crystaltwins.evaluation.inference import embed

        result = embed(source, data, cif_column=cif_column)
        ids, vectors, labels = result.ids, result.values, result.labels
    color_name = color or (next(iter(labels)) if labels else None)
    if color_name is not None and color_name not in labels:
        raise ValueError(f"no label {color_name!r}; available: {sorted(labels)}")
    values = labels[color_name] if color_name else None
    coordinates = reduce_2d(vectors, method, seed)
    image = Path(out)
    embedding_map(
        coordinates,
        values,
        image,
        color_name or "",
        f"{method.upper()} of {len(ids)} crystal embeddings",
    )
    table = image.with_suffix(".csv")
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "x", "y", *([color_name] if color_name else [])])
        for k in range(len(ids)):
            writer.writerow(
                [
                    ids[k],
                    coordinates[k, 0],
                    coordinates[k, 1],
                    *([values[k]] if values is not None else []),
                ]
            )
    return EmbeddingMap(image, table, len(ids))
