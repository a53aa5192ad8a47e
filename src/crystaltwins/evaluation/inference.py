"""Predictions and embeddings of a trained model for any supported crystal input."""

from __future__ import annotations

import csv
import functools
import inspect
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crystaltwins.data.cache import GraphCache
from crystaltwins.data.dataset import CrystalGraphDataset, GraphCollator
from crystaltwins.data.sources import prepare_caches
from crystaltwins.io.atomic import atomic_path
from crystaltwins.io.memory import as_source, is_path
from crystaltwins.io.records import BadRecord, CrystalInputError
from crystaltwins.models.checkpoint import EnsembleBundle, ModelBundle, load_model, load_predictor
from crystaltwins.models.property_model import AUX_TARGETS_KEY, Target
from crystaltwins.training.configs import INFERENCE_BATCH, INFERENCE_DEVICE, inference_device


@dataclass
class InferenceResult:
    """Per-crystal outputs of a model, with the crystals that could not be read."""

    ids: np.ndarray
    values: np.ndarray
    labels: dict[str, np.ndarray]
    skipped: list[BadRecord]
    #: ``"regression"`` (values in the target's units), ``"classification"`` (values are
    #: P(class 1)) or ``"embedding"``
    task: str = "regression"
    #: an ensemble's predictions: ``values`` is their mean, ``std`` their standard deviation
    #: (population, ddof 0) and ``members`` each member's value ``(N, K)``; ``None`` otherwise
    std: np.ndarray | None = None
    members: np.ndarray | None = None
    #: reduced formula of each crystal ``(N,)``
    formulas: np.ndarray | None = None
    #: the property predicted (the model's target name) and the unit of ``values`` ("" unknown)
    target: str = ""
    unit: str = ""
    #: the input's own value of the target ``(N,)`` (NaN where it has none); ``None`` when the
    #: input has no such column
    truth: np.ndarray | None = None
    #: where ``skipped`` is listed (the graph cache's ``skipped.csv``); ``None`` when nothing
    #: was skipped or the cache was a temporary one
    skipped_file: Path | None = None
    #: predictions of the auxiliary targets the model also learned (``finetune --aux-targets``):
    #: column name → ``(N,)`` in that column's own units (an ensemble: the members' mean); the
    #: run that trained it evaluated only its target
    auxiliary: dict[str, np.ndarray] = field(default_factory=dict)

    def columns(self) -> dict[str, list[Any]]:
        """The result as columns, in file order: ``id``, ``formula``, then for predictions
        ``property``, ``prediction`` (a classifier: ``predicted_class``, ``probability_class_1``),
        ``unit``, an ensemble's ``std`` and ``member_<k>``, ``predicted_<column>`` for each
        auxiliary target, and ``true_value`` when the input has the target; for embeddings
        ``e_0`` ... ``e_<H-1>`` and the input's labels."""
        n = len(self.ids)
        table: dict[str, list[Any]] = {"id": [str(i) for i in self.ids.tolist()]}
        table["formula"] = list(self.formulas) if self.formulas is not None else [""] * n
        values = np.asarray(self.values)
        if self.task == "embedding":
            for k in range(values.shape[1] if values.ndim == 2 else 0):
                table[f"e_{k}"] = values[:, k].tolist()
            table.update({name: np.asarray(v).tolist() for name, v in self.labels.items()})
            return table
        values = values.ravel()
        table["property"] = [self.target] * n
        if self.task == "classification":
            table["predicted_class"] = (values > 0.5).astype(int).tolist()
            table["probability_class_1"] = values.tolist()
        else:
            table["prediction"] = values.tolist()
            table["unit"] = [self.unit] * n
        if self.members is not None and self.std is not None:
            table["std"] = np.asarray(self.std).tolist()
            for k in range(self.members.shape[1]):
                table[f"member_{k}"] = self.members[:, k].tolist()
        for name, predicted in self.auxiliary.items():
            table[f"predicted_{name}"] = np.asarray(predicted).tolist()
        if self.truth is not None:
            table["true_value"] = np.asarray(self.truth, dtype=np.float64).tolist()
        return table

    def to_dataframe(self) -> Any:
        """A pandas ``DataFrame`` of :meth:`columns` (one row per crystal)."""
        import pandas as pd

        return pd.DataFrame(self.columns())


def _open(
    model: str | os.PathLike | ModelBundle,
    data: str | os.PathLike,
    cache_root: Any,
    workers: int,
    cif_column: str | None = None,
    id_key: str | None = None,
) -> tuple[ModelBundle, GraphCache]:
    if isinstance(model, EnsembleBundle):
        raise ValueError(
            f"an ensemble of {len(model.members)} fine-tuned models, usable with predict; here "
            "give one model, e.g. one of its members"
        )
    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    (cache,) = prepare_caches(
        [data],
        bundle.graph_settings,
        bundle.featurizer,
        cache_root,
        workers=workers,
        progress=False,
        log=None,
        cif_column=cif_column,
        id_key=id_key,
    )
    return bundle, cache


def _skipped(cache: GraphCache) -> list[BadRecord]:
    path = cache.cache_dir / "skipped.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [BadRecord(r["id"], r["source"], r["reason"]) for r in csv.DictReader(handle)]


@torch.no_grad()
def batched_outputs(
    fn: Any,
    modules: list[torch.nn.Module],
    dataset: Any,
    batch_size: int = INFERENCE_BATCH,
    device: str = INFERENCE_DEVICE,
) -> np.ndarray:
    """``fn(batch)`` for every crystal of ``dataset``, in order, with ``modules`` in eval mode on
    ``device``; returns the rows concatenated, ``(N, ...)``."""
    for module in modules:
        module.eval().to(device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=GraphCollator()
    )
    parts = [fn(batch.to(device)).float().cpu() for batch in loader]
    if parts:
        return torch.cat(parts).numpy()
    # No crystal: still the width of fn's rows (an encoder's H, a head's outputs), so that
    # what comes next (a classifier's softmax, an (N, H) embedding) needs no special case.
    width = getattr(fn, "out_dim", None) or getattr(getattr(fn, "head", None), "out_dim", 1)
    return np.zeros((0, int(width)), dtype=np.float32)


def _run(
    bundle: ModelBundle, cache: GraphCache, fn: Any, batch_size: int, device: str
) -> np.ndarray:
    modules = [bundle.encoder] + ([bundle.head] if bundle.head is not None else [])
    return batched_outputs(fn, modules, CrystalGraphDataset(cache), batch_size, device)


def _result(cache: GraphCache, values: np.ndarray) -> InferenceResult:
    labels = {name: cache.labels([name])[:, 0] for name in cache.label_names}
    result = InferenceResult(cache.ids, values, labels, _skipped(cache))
    result.formulas = formulas(cache)
    if result.skipped:
        result.skipped_file = cache.cache_dir / "skipped.csv"
    return result


def check_some_usable(result: InferenceResult, data: Any) -> None:
    """Refuse a result without a single crystal (every crystal of ``data`` was skipped, or it
    holds none), before anything is written.

    :raises ValueError: one line: how many were skipped and where they are listed (else the
        first one's reason)."""
    if len(result.ids):
        return
    if not result.skipped:
        raise ValueError(f"{data}: no crystals found in it; nothing was written")
    n = len(result.skipped)
    if result.skipped_file is not None:
        where = f"listed in {result.skipped_file}"
    else:  # a temporary cache: its list is gone
        where = str(result.skipped[0]) if n == 1 else f"the first: {result.skipped[0]}"
    raise ValueError(
        f"{data}: none of its crystals could be used ({n} skipped, {where}); nothing was written"
    )


def warn_skipped(result: InferenceResult) -> None:
    """Warn (a ``UserWarning``) when crystals of the input are missing from ``result``: a result
    used without a file (``out``) must not shorten silently, or its rows would be matched with
    the wrong inputs."""
    if not result.skipped:
        return
    n, total = len(result.skipped), len(result.skipped) + len(result.ids)
    first = result.skipped[0]
    where = f"listed in {result.skipped_file}" if result.skipped_file is not None else "the first"
    warnings.warn(
        f"{n} of {total} crystals could not be used and are not in the result (match rows by "
        f"result.ids; result.skipped says why); {where}: {first.id or first.source}: "
        f"{first.reason}",
        stacklevel=3,
    )


def formulas(cache: GraphCache) -> np.ndarray:
    """The reduced formula of every crystal of ``cache`` ``(N,)``, e.g. ``"SrTiO3"``."""
    from pymatgen.core import Composition, Element

    numbers = cache.array("atomic_numbers")
    offsets = cache.array("atom_offsets")
    seen: dict[tuple[tuple[int, int], ...], str] = {}
    out = []
    for k in range(len(cache)):
        z, counts = np.unique(numbers[offsets[k] : offsets[k + 1]], return_counts=True)
        key = tuple(zip(z.tolist(), counts.tolist(), strict=True))
        if key not in seen:
            amounts = {Element.from_Z(a): c for a, c in key if a > 0}
            seen[key] = Composition(amounts).reduced_formula if amounts else ""
        out.append(seen[key])
    return np.array(out, dtype=str) if out else np.zeros(0, dtype="<U1")


def _describe_target(result: InferenceResult, info: dict[str, Any]) -> InferenceResult:
    """Name the predicted property, its unit and the input's true values on ``result``."""
    from crystaltwins.evaluation.tasks import known_unit, value_unit

    target = Target.from_info(info)  # predictions are in the column's own units (GPa, not log10)
    column = result.target = target.column
    unit = target.unit or known_unit(info.get("data_source"), column)
    result.unit = value_unit(unit) if result.task == "regression" else ""
    if column in result.labels:
        result.truth = np.asarray(result.labels[column], dtype=np.float64)
    return result


def _in_memory(call: Any) -> Any:
    """Let ``call(model, data, batch_size, device, cache_root, ...)`` take crystals built in Python
    (see :mod:`crystaltwins.io.memory`): they become a temporary data source whose graph cache is
    made in the same temporary folder, so nothing is left behind."""

    signature = inspect.signature(call)

    @functools.wraps(call)
    def wrapper(model: Any, data: Any, *args: Any, **kwargs: Any) -> InferenceResult:
        bound = signature.bind(model, data, *args, **kwargs)
        if isinstance(data, str) and "\n" in data:  # a file's text, not its path
            raise CrystalInputError(
                "data",
                "a text of several lines, not a path: give the file's path, or parse the text "
                "first (pymatgen Structure.from_str(text, fmt='cif'), or a DataFrame with a "
                "'cif' column)",
            )
        if is_path(data):
            bound.apply_defaults()
            if bound.arguments["cache_root"] is not None or not is_single_structure(data):
                return call(model, data, *args, **kwargs)
            with tempfile.TemporaryDirectory(prefix="crystaltwins-") as tmp:
                bound.arguments["cache_root"] = tmp  # one crystal: no cache left behind
                return replace(call(*bound.args, **bound.kwargs), skipped_file=None)
        with as_source(data) as source:
            bound.arguments["data"] = source.path
            bound.arguments["cache_root"] = source.path.parent / "cache"
            result = call(*bound.args, **bound.kwargs)
            skipped = [*source.skipped, *(source.rename(bad) for bad in result.skipped)]
            return replace(result, skipped=skipped, skipped_file=None)

    return wrapper


def is_single_structure(data: str | os.PathLike) -> bool:
    """Whether ``data`` is a structure file holding one crystal (not a table, a folder, a graph
    cache or a file of several frames): its graph cache is not worth keeping."""
    import itertools

    from crystaltwins.io.readers import iter_entries

    path = Path(data)
    if not path.is_file() or ".csv" in path.name.lower() or ".tsv" in path.name.lower():
        return False
    try:
        return len(list(itertools.islice(iter_entries(path), 2))) == 1
    except (CrystalInputError, OSError, ValueError):
        return False  # the normal path reports it


def _to_file(kind: str) -> Any:
    """Check ``call``'s device (:func:`~crystaltwins.training.configs.inference_device`: ``auto``
    resolved) and let it take ``out=``: the ``kind`` file (``"predictions"`` CSV or
    ``"embeddings"`` npz) written there, atomically, after the checks of the CLI, each before
    any work it would waste: the device exists, ``out`` is not something else's file
    (:func:`check_output_file`), and at least one crystal was usable (:func:`check_some_usable`;
    else nothing is written and an earlier file stays)."""

    def decorate(call: Any) -> Any:
        signature = inspect.signature(call)

        @functools.wraps(call)
        def wrapper(
            model: Any, data: Any, *args: Any, out: str | os.PathLike | None = None, **kwargs: Any
        ) -> InferenceResult:
            bound = signature.bind(model, data, *args, **kwargs)
            bound.apply_defaults()
            bound.arguments["device"] = inference_device(bound.arguments["device"])
            if out is None:
                result = call(*bound.args, **bound.kwargs)
                warn_skipped(result)
                return result
            check_output_file(out, kind)
            result = call(*bound.args, **bound.kwargs)
            check_some_usable(result, data if is_path(data) else "the given crystals")
            _WRITERS[kind](result, out)
            return result

        written = inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None)
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), written]
        )
        return wrapper

    return decorate


@_to_file("embeddings")
@_in_memory
def embed(
    model: str | os.PathLike | ModelBundle,
    data: Any,
    batch_size: int = INFERENCE_BATCH,
    device: str = INFERENCE_DEVICE,
    cache_root: str | os.PathLike | None = None,
    workers: int = 1,
    cif_column: str | None = None,
    id_key: str | None = None,
) -> InferenceResult:
    """Crystal embeddings ``(N, H)`` (the encoder's output, before any head).

    :param data: a path (any format the readers read), a pymatgen ``Structure``, an ASE
        ``Atoms``, a list, ``{id: crystal}`` dict or pandas ``Series`` of them, or a pandas
        ``DataFrame`` with a structure column (ids: its id column, e.g. ``material_id``, else
        its index). Crystals that cannot be used are left out of the result with a warning
        (``skipped`` says why; match rows by ``ids``).
    :param cache_root: where the graph cache of a path's crystals is kept for the next call
        (default ``$CRYSTALTWINS_CACHE`` or ``~/.cache/crystaltwins``); a single structure
        file and crystals given in memory leave nothing behind (then it is not used).
    :param cif_column: the structure column of a CSV ``data`` (default ``cif`` / ``structure``).
    :param id_key: the ``Atoms.info`` key holding each crystal's id in an extxyz / ASE database
        ``data`` (default: detected; a frame without it is skipped).
    :param out: also write the embeddings there (:func:`write_embeddings_npz`), after the
        checks of the CLI (see ``_to_file``).
    """
    bundle, cache = _open(model, data, cache_root, workers, cif_column, id_key)
    result = _result(cache, _run(bundle, cache, bundle.encoder, batch_size, device))
    result.task = "embedding"
    return result


@_to_file("predictions")
@_in_memory
def predict(
    model: str | os.PathLike | ModelBundle | EnsembleBundle,
    data: Any,
    batch_size: int = INFERENCE_BATCH,
    device: str = INFERENCE_DEVICE,
    cache_root: str | os.PathLike | None = None,
    workers: int = 1,
    cif_column: str | None = None,
    id_key: str | None = None,
) -> InferenceResult:
    """Property predictions of a fine-tuned model, in the target's units (the inverse of any
    target transform applied), or P(class 1) for a classifier.

    An ensemble (``finetune --ensemble K``) predicts the mean of its members' predictions, with
    their standard deviation (``std``, ddof 0) and each member's value (``members``).

    :param data: as for :func:`embed`.
    :param cif_column: / :param id_key: as for :func:`embed`.
    :param out: also write the predictions there (:func:`write_predictions_csv`), after the
        checks of the CLI (see ``_to_file``).
    """
    loaded = model if isinstance(model, (ModelBundle, EnsembleBundle)) else load_predictor(model)
    if isinstance(loaded, EnsembleBundle):
        options = (batch_size, device, cache_root, workers, cif_column, id_key)
        return _predict_ensemble(loaded, data, *options)
    try:  # before any graph is built: an encoder alone predicts nothing
        property_model = loaded.property_model()
    except ValueError as error:
        named = "the given model" if isinstance(model, ModelBundle) else str(model)
        raise ValueError(f"{named}: {error}") from None
    bundle, cache = _open(loaded, data, cache_root, workers, cif_column, id_key)
    outputs = batched_outputs(
        property_model, [property_model], CrystalGraphDataset(cache), batch_size, device
    )
    result = _result(cache, property_model.in_target_units(outputs))
    result.task = property_model.target.task
    result.auxiliary = auxiliary_predictions(outputs, bundle.info)
    return _describe_target(result, bundle.info)


def auxiliary_predictions(outputs: np.ndarray, info: dict[str, Any]) -> dict[str, np.ndarray]:
    """Head outputs ``(N, 1 + K)`` of a regression model with ``K`` auxiliary targets →
    column → ``(N,)`` values in the column's units (the standardisation in ``info`` undone)."""
    entries = info.get(AUX_TARGETS_KEY) or []
    if len(outputs) == 0:  # no usable crystal (reported by the caller)
        return {str(entry["column"]): np.zeros(0, dtype=np.float32) for entry in entries}
    return {
        str(entry["column"]): outputs[:, 1 + k] * float(entry["std"]) + float(entry["mean"])
        for k, entry in enumerate(entries)
    }


def _predict_ensemble(
    ensemble: EnsembleBundle,
    data: str | os.PathLike,
    batch_size: int,
    device: str,
    cache_root: str | os.PathLike | None,
    workers: int,
    cif_column: str | None,
    id_key: str | None,
) -> InferenceResult:
    """:func:`predict` of every member, combined: their mean, std (ddof 0) and values."""
    results = [
        predict(member, data, batch_size, device, cache_root, workers, cif_column, id_key)
        for member in ensemble.members
    ]
    first = results[0]
    for k, result in enumerate(results[1:], start=1):
        if not np.array_equal(result.ids, first.ids):  # members share their graph settings
            raise ValueError(f"{data}: ensemble member {k} saw other crystals than member 0")
        if list(result.auxiliary) != list(first.auxiliary):  # a file's members are checked
            raise ValueError(
                f"ensemble member {k} learned other auxiliary targets "
                f"({', '.join(result.auxiliary) or 'none'}) than member 0 "
                f"({', '.join(first.auxiliary) or 'none'})"
            )
    members = np.stack([np.asarray(r.values, dtype=np.float64) for r in results], axis=1)
    combined = replace(first, values=members.mean(axis=1), std=members.std(axis=1))
    combined.members = members
    combined.auxiliary = {
        name: np.mean([np.asarray(r.auxiliary[name], dtype=np.float64) for r in results], axis=0)
        for name in first.auxiliary
    }
    return combined


def write_predictions_csv(
    result: InferenceResult, path: str | os.PathLike, column: str = "prediction"
) -> Path:
    """Write the predictions file: the columns of :meth:`InferenceResult.columns` (``id``,
    ``formula``, ``property``, ``prediction`` or a classifier's ``predicted_class`` and
    ``probability_class_1``, ``unit``, an ensemble's ``std`` and ``member_<k>``, ``true_value``
    when the input has the target); numbers at float32 precision (the model's), empty for NaN.
    Written atomically; an existing file is replaced only if it is an earlier predictions file
    (see :func:`check_output_file`).

    :param column: the name of the prediction column (default ``prediction``).
    """
    path = Path(path)
    check_output_file(path, "predictions", column)
    table = result.columns()
    if column != "prediction" and "prediction" in table:
        if column in table:
            raise ValueError(f"{path}: the prediction column cannot be named {column!r}: taken")
        table = {column if k == "prediction" else k: v for k, v in table.items()}
    numeric = [name for name in table if name not in _TEXT_COLUMNS]
    for name in numeric:
        table[name] = [float32_text(v) for v in table[name]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(table))
        writer.writerows(zip(*table.values(), strict=True))
    return path


#: Columns of a predictions file that hold text.
_TEXT_COLUMNS = frozenset({"id", "formula", "property", "unit", "predicted_class"})


def float32_text(value: Any) -> str:
    """A number as the shortest text that reads back as the same float32 (``""`` for NaN):
    the precision of a model's output, without float64 noise such as ``0.30000001192092896``."""
    number = float(value)
    if math.isnan(number):
        return ""
    return repr(float(np.float32(number))) if math.isinf(number) else str(np.float32(number))


def write_embeddings_npz(result: InferenceResult, path: str | os.PathLike) -> Path:
    """``ids`` (N,), ``embeddings`` (N, H), and ``label_<name>`` (N,) for each label present.
    Written atomically; an existing file is replaced only if it is an earlier embeddings file."""
    path = Path(path)
    check_output_file(path, "embeddings")
    arrays = {"ids": result.ids.astype(str), "embeddings": result.values}
    arrays.update({f"label_{k}": v for k, v in result.labels.items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _is_predictions_csv(path: Path, column: str) -> bool:
    try:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    # Only this tool's layout: a bare ``id,prediction`` header (its output before the formula and
    # unit columns) may as well be a user's own table, and is never replaced.
    known = _TEXT_COLUMNS | {column, "probability_class_1", "std", "true_value"}
    return header[:3] == ["id", "formula", "property"] and all(
        name in known
        or (name.startswith("member_") and name[7:].isdigit())
        or (name.startswith("predicted_") and len(name) > 10)  # an auxiliary target's
        for name in header
    )


def _is_embeddings_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {"ids", "embeddings"} <= set(getattr(data, "files", ()))
    except Exception:
        return False


def check_output_file(path: str | os.PathLike, kind: str, column: str = "prediction") -> None:
    """Refuse (``ValueError``) an output path that would overwrite something this command did
    not write: a folder, or an existing file that is not an earlier ``kind`` file
    (``"predictions"``: a CSV whose header starts ``id,formula,property`` and holds only
    the columns this command writes;
    ``"embeddings"``: an ``.npz`` holding ``ids`` and ``embeddings``)."""
    path = Path(path)
    if path.is_dir():
        name = "predictions.csv" if kind == "predictions" else "embeddings.npz"
        raise ValueError(f"{path}: is a folder; give a file name, e.g. {path / name}")
    if not path.exists():
        return
    earlier = (
        _is_predictions_csv(path, column) if kind == "predictions" else _is_embeddings_npz(path)
    )
    if not earlier:
        raise ValueError(
            f"{path}: exists and is not an earlier {kind} file of crystaltwins; nothing was "
            "written; give a new file name (or remove that file yourself)"
        )


#: What ``out=`` of :func:`predict` / :func:`embed` writes.
_WRITERS: dict[str, Any] = {
    "predictions": write_predictions_csv,
    "embeddings": write_embeddings_npz,
}
