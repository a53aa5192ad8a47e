"""The user-facing functions, importable from the package itself::

    import crystaltwins as ct

    ct.featurize("data/perovskites.csv.gz", "cache/perovskites")
    encoder = ct.pretrain(["data/mp36k.csv.gz"], "runs/pre", epochs=15)
    metrics = ct.finetune("data/perovskites.csv.gz", "e_form", "runs/ct", pretrained=encoder)
    result = ct.predict("runs/ct", "new_structures/")
    model = ct.load_model("default")

Each is a thin layer over the module that does the work (the CLI calls the same ones); settings are
the fields of :class:`~crystaltwins.training.pretrain.PretrainConfig` and
:class:`~crystaltwins.training.finetune.FinetuneConfig`, given as keywords or as a whole config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crystaltwins.data.cache import CacheSummary, build_graph_cache
from crystaltwins.evaluation.inference import InferenceResult, embed, predict
from crystaltwins.models.checkpoint import ModelBundle, load_model


def featurize(
    data: str | os.PathLike, out: str | os.PathLike, workers: int = 1, **settings: Any
) -> CacheSummary:
    """Build (or reuse) the graph cache of ``data`` in the folder ``out``; a cache folder is
    itself a data source for the other functions. ``settings``: see
    :func:`~crystaltwins.data.cache.build_graph_cache`."""
    return build_graph_cache(data, out, workers=workers, **settings)


def pretrain(
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    out: str | os.PathLike | None = None,
    *,
    config: Any = None,
    **settings: Any,
) -> Path:
    """Pre-train an encoder without labels; returns the path of its model file.

    :param data: one data source or several (pre-training mixes them).
    :param out: the run folder.
    :param config: a whole :class:`~crystaltwins.training.pretrain.PretrainConfig` instead.
    :param settings: any other field of ``PretrainConfig`` (``epochs=15``, ``lr=1e-5``, ...).
    """
    from crystaltwins.training.pretrain import PretrainConfig
    from crystaltwins.training.pretrain import pretrain as run

    if config is None:
        if data is None or out is None:
            raise ValueError("pretrain needs data and out (or a whole config)")
        sources = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        config = PretrainConfig(data=[str(s) for s in sources], out=str(out), **settings)
    elif data is not None or out is not None or settings:
        raise ValueError("give either a config or data, out and settings, not both")
    path = run(config)
    from crystaltwins.evaluation.plots import OBJECTIVE_NAMES, learning_curves

    loss = f"{OBJECTIVE_NAMES.get(config.objective, config.objective)} loss"
    folder = Path(config.out)
    learning_curves(folder / "history.csv", folder / "learning_curves.png", loss_name=loss)
    return path


def finetune(
    data: str | os.PathLike | None = None,
    target: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    config: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune (``pretrained=...``, a model file, run folder or ``"default"``) or train from
    scratch (``from_scratch=True``) a property model; returns the metrics (also in
    ``OUT/metrics.json``).

    :param config: a whole :class:`~crystaltwins.training.finetune.FinetuneConfig` instead.
    :param settings: any other field of ``FinetuneConfig`` (``epochs``, ``unit``, ...).
    """
    from crystaltwins.training.finetune import FinetuneConfig
    from crystaltwins.training.finetune import finetune as run

    if config is None:
        if data is None or target is None or out is None:
            raise ValueError("finetune needs data, target and out (or a whole config)")
        if "pretrained" in settings and settings["pretrained"] is not None:
            settings["pretrained"] = str(settings["pretrained"])
        config = FinetuneConfig(data=str(data), target=target, out=str(out), **settings)
    elif data is not None or target is not None or out is not None or settings:
        raise ValueError("give either a config or data, target, out and settings, not both")
    from crystaltwins.evaluation.tasks import with_known_unit

    return run(with_known_unit(config))


__all__ = [
    "CacheSummary",
    "InferenceResult",
    "ModelBundle",
    "embed",
    "featurize",
    "finetune",
    "load_model",
    "predict",
    "pretrain",
]
