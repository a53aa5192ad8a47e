"""A 2-D map of crystal embeddings coloured by a property (paper Fig. 3), from an
``embeddings.npz`` or from a model and data: ``map.png`` and its coordinates ``map.csv``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from crystaltwins.evaluation.plots import MapSummary, check_map_output, draw_map


def draw_embedding_map(
    source: str | os.PathLike | Any,
    out: str | os.PathLike,
    data: Any = None,
    method: str = "tsne",
    color: str | None = None,
    seed: int = 0,
    cif_column: str | None = None,
    id_key: str | None = None,
    log_color: bool = False,
) -> MapSummary:
    """Reduce embeddings to 2-D (``tsne``, ``umap`` or ``pca``) and draw them, coloured by the
    label ``color`` (default: the first one; its unit on the colour bar when known).

    :param source: an ``embeddings.npz``, or a model (file, run folder or loaded) to embed ``data``.
    :param out: the picture (``.png``); the coordinates go beside it as ``.csv``.
    :param cif_column: / :param id_key: how to read ``data`` (see :func:`~crystaltwins.evaluation.inference.embed`).
    :param log_color: a logarithmic colour scale.
    """
    from crystaltwins.evaluation.tasks import known_unit

    check_map_output(out)  # before any work
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".npz":
        with np.load(source) as arrays:
            ids, vectors = arrays["ids"], arrays["embeddings"]
            labels = {k[len("label_") :]: arrays[k] for k in arrays.files if k.startswith("label_")}
    else:
        if data is None:
            raise ValueError("give --data DATA when SOURCE is a model")
        from crystaltwins.evaluation.inference import embed

        result = embed(source, data, cif_column=cif_column, id_key=id_key)
        ids, vectors, labels = result.ids, result.values, result.labels
    on_disk = isinstance(data, (str, os.PathLike))
    units = {name: known_unit(data, name) for name in labels} if on_disk else {}
    return draw_map(
        ids, vectors, labels, out, method, color, seed, log_color=log_color, units=units
    )
