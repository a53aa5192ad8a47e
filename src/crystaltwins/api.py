"""The user-facing functions, importable from the package itself::

    import crystaltwins as ct

    ct.featurize("data/perovskites.csv.gz", "cache/perovskites")
    encoder = ct.pretrain(["data/mp36k.csv.gz"], "runs/pre", epochs=15)
    metrics = ct.finetune("data/perovskites.csv.gz", "e_form", "runs/ct", pretrained=encoder)
    result = ct.predict("runs/ct", "new_structures/")
    model = ct.load_model("default")

Each is a thin layer over the module that does the work (the CLI calls the same ones); settings are
the fields of :class:`~crystaltwins.training.configs.PretrainConfig` and
:class:`~crystaltwins.training.configs.FinetuneConfig`, given as keywords or as a whole config
(each checked by its ``validate()`` before any work).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crystaltwins.data.cache import CacheSummary, build_graph_cache
from crystaltwins.evaluation.inference import (
    InferenceResult,
    check_output_file,
    embed,
    predict,
    write_embeddings_npz,
    write_predictions_csv,
)
from crystaltwins.evaluation.maps import draw_embedding_map
from crystaltwins.evaluation.plots import MapSummary
from crystaltwins.graph.atom_features import AtomFeaturizer, featurizer_for
from crystaltwins.graph.crystal_graph import CrystalGraph
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.memory import check_data_path, save_crystals
from crystaltwins.models.checkpoint import ModelBundle, load_model

if TYPE_CHECKING:
    from crystaltwins.evaluation.bench import BenchConfig
    from crystaltwins.training.configs import FinetuneConfig, PretrainConfig


def crystal_graph(
    structure: Any,
    crystal_id: str | None = None,
    *,
    radius: float | None = None,
    max_neighbors: int | None = None,
    id_key: str | None = None,
) -> tuple[CrystalGraph, int]:
    """The crystal graph of one crystal of a structure file (CIF, POSCAR, extxyz, a table...)
    or of crystals built in Python (a pymatgen ``Structure``, an ASE ``Atoms``, a list...: as
    :func:`predict` takes them): the one named ``crystal_id``, else the first; returns it and
    how many crystals there are.

    :param radius: / :param max_neighbors: graph settings (default: :class:`GraphSettings`'s).
    :raises ValueError: no crystal in the file, or none named ``crystal_id``.
    """
    from crystaltwins.graph.crystal_graph import build_crystal_graph
    from crystaltwins.io.memory import as_source, is_path
    from crystaltwins.io.readers import iter_entries, parse_entry

    if not is_path(structure):  # written to a temporary file, read as any file
        with as_source(structure) as source:
            settings = {"radius": radius, "max_neighbors": max_neighbors, "id_key": id_key}
            chosen = source.ids[0] if crystal_id is None else str(crystal_id)
            if chosen not in source.ids:
                raise ValueError(f"the given crystals: no crystal with the id {chosen!r}")
            bad = next((b for b in source.skipped if b.id == chosen), None)
            if bad is not None:
                raise ValueError(f"{bad.source}: {bad.reason}")
            try:
                graph, _ = crystal_graph(source.path, chosen, **settings)
            except ValueError as error:  # name the user's crystal, not the temporary file
                reason = re.sub(re.escape(str(source.path)) + r"(:row \d+)?: ", "", str(error))
                raise ValueError(f"{source.kind} {chosen}: {reason}") from None
            return graph, len(source.ids)

    entries = list(iter_entries(structure, id_key=id_key))
    if not entries:
        raise ValueError(f"{structure}: no structure found")
    chosen = entries[0]
    if crystal_id is not None:
        named = [e for e in entries if str(e.id) == str(crystal_id)]
        if not named:
            raise ValueError(f"{structure}: no crystal with the id {crystal_id!r}")
        chosen = named[0]
    record = parse_entry(chosen)
    asked = {"radius": radius, "max_neighbors": max_neighbors}
    settings = GraphSettings(**{k: v for k, v in asked.items() if v is not None})
    built = build_crystal_graph(record.structure, settings, id=record.id, source=record.source)
    return built, len(entries)


def featurize(
    data: str | os.PathLike,
    out: str | os.PathLike,
    workers: int | None = None,
    *,
    radius: float | None = None,
    max_neighbors: int | None = None,
    atom_init: str | os.PathLike | None = None,
    settings: GraphSettings | None = None,
    featurizer: AtomFeaturizer | None = None,
    **options: Any,
) -> CacheSummary:
    """Build (or reuse) the graph cache of ``data`` in the folder ``out``; a cache folder is
    itself a data source for the other functions (its graph settings go with it).

    :param workers: processes building graphs (default: all cores).
    :param radius: / :param max_neighbors: graph settings (default: :class:`GraphSettings`'s),
        or give whole ``settings``.
    :param atom_init: element features (default: :func:`featurizer_for`'s rule), or give a
        ``featurizer``.
    :param options: see :func:`~crystaltwins.data.cache.build_graph_cache` (``targets``,
        ``progress``, ``force``, ``cif_column``)."""
    check_data_path(data, "featurize")
    if settings is None:
        asked = {"radius": radius, "max_neighbors": max_neighbors}
        settings = GraphSettings(**{k: v for k, v in asked.items() if v is not None})
    featurizer = featurizer or featurizer_for(data, atom_init)
    workers = workers if workers is not None else os.cpu_count() or 1
    return build_graph_cache(data, out, settings, featurizer=featurizer, workers=workers, **options)


def pretrain(
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    out: str | os.PathLike | None = None,
    *,
    config: PretrainConfig | None = None,
    **settings: Any,
) -> Path:
    """Pre-train an encoder without labels; returns the path of its model file.

    :param data: one data source or several (pre-training mixes them).
    :param out: the run folder.
    :param config: a whole :class:`~crystaltwins.training.configs.PretrainConfig` instead.
    :param settings: any other field of ``PretrainConfig`` (``epochs=15``, ``lr=1e-5``, ...).
    """
    from crystaltwins.training.configs import PretrainConfig
    from crystaltwins.training.pretrain import pretrain as run

    if config is None:
        if data is None or out is None:
            raise ValueError("pretrain needs data and out (or a whole config)")
        check_data_path(data, "pretrain")
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
    config: FinetuneConfig | None = None,
    callbacks: list[Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune (``pretrained=...``, a model file, run folder or ``"default"``) or train from
    scratch (``from_scratch=True``) a property model; returns the metrics (also in
    ``OUT/metrics.json``).

    :param config: a whole :class:`~crystaltwins.training.configs.FinetuneConfig` instead.
    :param callbacks: extra Lightning callbacks (e.g. a progress display).
    :param settings: any other field of ``FinetuneConfig`` (``epochs``, ``unit``, ...).
    """
    from crystaltwins.evaluation.runs import finetune as run
    from crystaltwins.training.configs import FinetuneConfig

    if config is None:
        if data is None or target is None or out is None:
            raise ValueError("finetune needs data, target and out (or a whole config)")
        check_data_path(data, "finetune")
        if not isinstance(data, (str, os.PathLike)):
            if len(data) != 1:
                raise ValueError(f"finetune takes one data source, got {len(data)}")
            data = data[0]
        start = settings.get("pretrained")
        if start is not None and not isinstance(start, (str, os.PathLike)):
            raise ValueError(
                f"pretrained takes a model file, run folder or shipped name (a run records it), "
                f"not a {type(start).__name__}: save a loaded model first "
                "(crystaltwins.models.checkpoint.save_model('start.pt', model)) and give its path"
            )
        if start is not None:
            settings["pretrained"] = str(start)
        config = FinetuneConfig(data=str(data), target=target, out=str(out), **settings)
    elif data is not None or target is not None or out is not None or settings:
        raise ValueError("give either a config or data, target, out and settings, not both")
    from crystaltwins.evaluation.tasks import with_known_unit

    return run(with_known_unit(config), callbacks)


def bench(
    out: str | os.PathLike | None = None, *, config: BenchConfig | None = None, **settings: Any
) -> dict[str, Any]:
    """Reproduce the paper's comparison (CT vs CGCNN from scratch); returns ``results.json``'s
    content. ``settings``: the fields of :class:`~crystaltwins.evaluation.bench.BenchConfig`."""
    from crystaltwins.evaluation.bench import BenchConfig, run_bench

    if config is None:
        if out is None:
            raise ValueError("bench needs out (or a whole config)")
        config = BenchConfig(out=str(out), **settings)  # data_root: run_bench reads the default
    elif out is not None or settings:
        raise ValueError("give either a config or out and settings, not both")
    return run_bench(config=config)


def plot_embeddings(
    source: Any, out: str | os.PathLike, data: Any = None, **settings: Any
) -> MapSummary:
    """A 2-D map (t-SNE, UMAP or PCA) of embeddings coloured by a property; ``source``: an
    ``embeddings.npz`` or a model to embed ``data`` with. See
    :func:`~crystaltwins.evaluation.maps.draw_embedding_map`."""
    return draw_embedding_map(source, out, data, **settings)


__all__ = [
    "CacheSummary",
    "MapSummary",
    "InferenceResult",
    "ModelBundle",
    "bench",
    "check_output_file",
    "embed",
    "featurize",
    "finetune",
    "crystal_graph",
    "load_model",
    "plot_embeddings",
    "predict",
    "pretrain",
    "save_crystals",
    "write_embeddings_npz",
    "write_predictions_csv",
]
