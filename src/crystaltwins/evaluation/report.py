"""From a trained property model to its results: scores on every split, ``metrics.json``,
``test_predictions.csv``, an ensemble member's predictions, the combined ensemble, and plots.

Training (:mod:`crystaltwins.training.finetune`) stops at a trained model; this module reports
on it. The files are those documented in :mod:`crystaltwins.training.ensemble` and the README.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from crystaltwins.data.dataset import CrystalGraphDataset
from crystaltwins.evaluation.inference import batched_outputs
from crystaltwins.evaluation.metrics import (
    classification_metrics,
    metrics_json,
    regression_metrics,
)
from crystaltwins.evaluation.plots import learning_curves, model_label, parity_plot
from crystaltwins.evaluation.tasks import metric_unit
from crystaltwins.io.atomic import atomic_path, write_text_atomic
from crystaltwins.models.checkpoint import EnsembleBundle, load_model, save_ensemble
from crystaltwins.models.property_model import PropertyModel
from crystaltwins.models.targets import TRANSFORMS
from crystaltwins.training.configs import INFERENCE_BATCH, INFERENCE_DEVICE, FinetuneConfig
from crystaltwins.training.ensemble import MEMBER_PREDICTIONS, STD_DDOF
from crystaltwins.training.finetune import SEEN_BY_START_NAME, TrainedRun, save_property_model

_SPLITS = ("train", "val", "test")


def predict_dataset(
    model: PropertyModel,
    dataset: CrystalGraphDataset,
    batch_size: int = INFERENCE_BATCH,
    device: str = INFERENCE_DEVICE,
) -> np.ndarray:
    """Raw head outputs ``(N, out_dim)`` for every crystal of ``dataset``, in order (eval mode);
    ``model.transformed`` / ``model.in_target_units`` convert them."""
    return batched_outputs(model, [model], dataset, batch_size, device)


def predict_embeddings(
    encoder: nn.Module, dataset: CrystalGraphDataset, batch_size: int = INFERENCE_BATCH
) -> np.ndarray:
    """Crystal embeddings ``(N, H)`` of ``dataset`` in order (eval mode, CPU)."""
    return batched_outputs(encoder, [encoder], dataset, batch_size)


@dataclass
class Scores:
    """A trained run's metrics and predictions.

    :param predictions: per split, ``(n,)`` predictions in the metrics' units (transformed
        target, or P(class 1)).
    :param head_outputs: per split, ``(n, out_dim)`` the head's raw outputs.
    """

    metrics: dict[str, Any]
    predictions: dict[str, np.ndarray]
    head_outputs: dict[str, np.ndarray]


def score(run: TrainedRun) -> Scores:
    """Metrics of ``run`` on train, validation and test (the model's best epoch)."""
    config, out = run.config, run.out
    train, val, test = (run.parts[name] for name in _SPLITS)
    metrics: dict[str, Any] = {
        "target": run.target_name,
        "unit": config.unit,
        # the MAEs' unit: the target's after its transform (log10(GPa) for a log10 run)
        "metric_unit": metric_unit(config.unit, config.target_transform),
        "task": config.task,
        **(
            {"aux_targets": list(config.aux_targets), "aux_weight": config.aux_weight}
            if config.aux_targets
            else {}
        ),
        "init": run.start.init,
        "crystals": {
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "dropped_invalid_target": int(len(run.planned.raw) - len(run.planned.keep)),
        },
        "epochs": config.epochs,
        "epochs_run": run.epochs_run,
        "best_epoch": best_epoch(out),
        "seconds": run.seconds,
        **run.notes,
    }
    predictions: dict[str, np.ndarray] = {}
    head_outputs: dict[str, np.ndarray] = {}
    for name, part in run.parts.items():
        raw_out = head_outputs[name] = predict_dataset(run.model, part)
        truth = run.values[part.indices]
        pred = predictions[name] = run.model.transformed(raw_out)
        score_of = classification_metrics if config.task == "classification" else regression_metrics
        metrics[name] = score_of(truth, pred)
    y_train = run.values[train.indices]
    metrics["mean_predictor_test_mae"] = float(
        np.mean(np.abs(run.values[test.indices] - y_train.mean()))
    )
    return Scores(metrics, predictions, head_outputs)


def write_test_predictions(run: TrainedRun, scores: Scores) -> Path:
    """``RUN_DIR/test_predictions.csv`` (see :func:`write_predictions`)."""
    config, test = run.config, run.parts["test"]
    transformed = None  # the test file's values in the units of the metrics, when they differ
    test_prediction = run.model.in_target_units(scores.head_outputs["test"])
    if config.task == "regression" and config.target_transform != "none":
        transformed = (
            config.target_transform,
            run.values[test.indices],
            scores.predictions["test"],
        )
    path = run.out / "test_predictions.csv"
    write_predictions(
        path,
        run.cache.ids[test.indices],
        run.planned.raw[test.indices],
        test_prediction,
        config.task,
        transformed,
    )
    return path


def report_run(run: TrainedRun, member: bool = False) -> dict[str, Any]:
    """Score a trained run and write its results, in this order: ``test_predictions.csv``,
    ``metrics.json``, an ensemble ``member``'s :data:`MEMBER_PREDICTIONS`, ``model.pt`` (the
    mark of a finished run), the plots. Returns the metrics (``{}`` on ranks > 0)."""
    if not run.main:
        return {}
    scores = score(run)
    write_test_predictions(run, scores)
    write_text_atomic(run.out / "metrics.json", metrics_json(scores.metrics))
    if member:
        write_member_predictions(
            run.out / MEMBER_PREDICTIONS,
            run.cache.ids,
            run.planned.raw,
            run.values,
            run.model,
            scores.head_outputs,
            run.parts,
        )
    save_property_model(run, scores.metrics)
    if run.config.plots:
        draw_run_plots(run, scores)
    return scores.metrics


def draw_run_plots(run: TrainedRun, scores: Scores) -> None:
    """``parity.png`` (regression, test split) and ``learning_curves.png`` in the run folder,
    with the target's name and unit and which model it is (CT or scratch)."""
    config, out, test = run.config, run.out, run.parts["test"]
    shown = {"unit": config.unit, "transform": config.target_transform}
    if config.task == "regression":
        parity_plot(
            run.values[test.indices],
            scores.predictions["test"],
            out / "parity.png",
            run.target_name,
            model=model_label(run.start.init),
            **shown,
        )
    loss = "cross-entropy" if config.task == "classification" else "MSE (standardised target)"
    if config.aux_targets:
        loss += f" + {config.aux_weight:g} x auxiliary MSE"
    learning_curves(
        out / "history.csv", out / "learning_curves.png", run.target_name, loss_name=loss, **shown
    )


def write_member_predictions(
    path: Path,
    ids: np.ndarray,
    raw: np.ndarray,
    values: np.ndarray,
    model: PropertyModel,
    head_outputs: dict[str, np.ndarray],
    parts: dict[str, CrystalGraphDataset],
) -> None:
    """:data:`MEMBER_PREDICTIONS`: for each split ``S``: ``S_ids``, ``S_target`` (own units), ``S_truth`` (the metrics'
    units: transformed target, or class) and ``S_prediction`` (own units, or P(class 1))."""
    arrays: dict[str, np.ndarray] = {}
    for name, part in parts.items():
        prediction = model.in_target_units(head_outputs[name])
        arrays[f"{name}_ids"] = np.asarray(ids[part.indices]).astype(str)
        arrays[f"{name}_target"] = raw[part.indices]
        arrays[f"{name}_truth"] = values[part.indices]
        arrays[f"{name}_prediction"] = prediction
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def best_epoch(out: Path) -> int | None:
    path = out / "history.csv"
    if not path.exists():
        return None
    rows = [r for r in csv.DictReader(path.open()) if r.get("val_mae")]
    return int(min(rows, key=lambda r: float(r["val_mae"]))["epoch"]) if rows else None


def write_predictions(
    path: Path,
    ids: np.ndarray,
    target: np.ndarray,
    prediction: np.ndarray,
    task: str,
    transformed: tuple[str, np.ndarray, np.ndarray] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """``id,target,prediction`` in the target's own units; for a classifier
    ``id,target,predicted_class,probability_class_1`` (``prediction`` being P(class 1)).

    :param transformed: ``(transform name, transformed target, transformed prediction)`` of a
        run with a target transform: written as the extra columns ``<name>_target`` and
        ``<name>_prediction`` (the values the metrics are computed on).
    :param extra: more columns, last (an ensemble's ``std`` and ``member_<k>``).
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        if task == "classification":
            writer.writerow(
                ["id", "target", "predicted_class", "probability_class_1", *(extra or {})]
            )
            classes = (prediction > 0.5).astype(int)
            rows = zip(
                ids.tolist(), target.tolist(), classes.tolist(), prediction.tolist(), strict=True
            )
        elif transformed is None:
            writer.writerow(["id", "target", "prediction", *(extra or {})])
            rows = zip(ids.tolist(), target.tolist(), prediction.tolist(), strict=True)
        else:
            name, target_t, prediction_t = transformed
            writer.writerow(
                [
                    "id",
                    "target",
                    "prediction",
                    f"{name}_target",
                    f"{name}_prediction",
                    *(extra or {}),
                ]
            )
            rows = zip(
                ids.tolist(),
                target.tolist(),
                prediction.tolist(),
                target_t.tolist(),
                prediction_t.tolist(),
                strict=True,
            )
        if extra:
            columns = np.column_stack(list(extra.values())).tolist()
            rows = ((*row, *more) for row, more in zip(rows, columns, strict=True))
        writer.writerows(rows)


def _load_predictions(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / MEMBER_PREDICTIONS, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def calibration(target: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """How well the spread ``std`` of an ensemble describes the errors of its ``mean``:
    the fraction of errors within 1 and 2 std, and the Spearman correlation of |error| and std
    (``nan`` when either is constant)."""
    from scipy.stats import spearmanr

    error = np.abs(np.asarray(mean, np.float64) - np.asarray(target, np.float64))
    std = np.asarray(std, np.float64)
    if len(error) > 1 and np.ptp(error) > 0 and np.ptp(std) > 0:
        rho = float(spearmanr(error, std).statistic)
    else:
        rho = float("nan")
    return {
        "within_1_std": float(np.mean(error <= std)) if len(error) else float("nan"),
        "within_2_std": float(np.mean(error <= 2 * std)) if len(error) else float("nan"),
        "spearman_abs_error_std": rho,
    }


def combine_members(config: FinetuneConfig, folders: list[Path]) -> dict[str, Any]:
    """Write the ensemble's ``test_predictions.csv``, ``metrics.json`` and ``model.pt`` from its
    finished members' folders; returns the metrics."""
    out = Path(config.out)
    member_metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
    parts = [_load_predictions(f) for f in folders]
    first = member_metrics[0]
    classifier = config.task == "classification"
    forward = TRANSFORMS[config.target_transform][0]
    metrics: dict[str, Any] = {k: first[k] for k in ("target", "unit", "task", "init", "crystals")}
    if "seen_by_starting_model" in first:  # one split: the members' counts are the same
        metrics["seen_by_starting_model"] = first["seen_by_starting_model"]
    metrics["epochs"] = config.epochs
    metrics["epochs_run"] = max(int(m["epochs_run"]) for m in member_metrics)
    metrics["best_epoch"] = None  # each member has its own: members/<k>/metrics.json
    metrics["seconds"] = float(sum(m["seconds"] for m in member_metrics))
    combined: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in _SPLITS:
        for k, part in enumerate(parts[1:], start=1):
            if not np.array_equal(part[f"{name}_ids"], parts[0][f"{name}_ids"]):
                raise ValueError(
                    f"{folders[k]}: member {k} has another {name} split than member 0; "
                    "run the ensemble again with --overwrite"
                )
        values = np.stack([p[f"{name}_prediction"].astype(np.float64) for p in parts], axis=1)
        mean = values.mean(axis=1)
        truth = parts[0][f"{name}_truth"]
        if classifier:
            metrics[name] = classification_metrics(truth, mean)
        else:
            metrics[name] = regression_metrics(truth, forward(mean))
        combined[name] = (values, mean)
    metrics["mean_predictor_test_mae"] = first["mean_predictor_test_mae"]
    values, mean = combined["test"]
    std = values.std(axis=1, ddof=STD_DDOF)
    test_target = parts[0]["test_target"]
    key = "accuracy" if classifier else "mae"
    metrics["ensemble"] = {
        "members": len(folders),
        "seeds": [config.seed + k for k in range(len(folders))],
        "split_seed": config.split_seed_value,
        "std_ddof": STD_DDOF,
        f"member_test_{key}": [m["test"][key] for m in member_metrics],
        "member_epochs_run": [m["epochs_run"] for m in member_metrics],
        "member_best_epoch": [m["best_epoch"] for m in member_metrics],
        **calibration(test_target, mean, std),
    }
    transformed = None
    if not classifier and config.target_transform != "none":
        transformed = (config.target_transform, parts[0]["test_truth"], forward(mean))
    extra = {"std": std, **{f"member_{k}": values[:, k] for k in range(values.shape[1])}}
    write_predictions(
        out / "test_predictions.csv",
        parts[0]["test_ids"],
        test_target,
        mean,
        config.task,
        transformed,
        extra,
    )
    write_text_atomic(out / "metrics.json", metrics_json(metrics))
    for name in ("invalid_targets.csv", SEEN_BY_START_NAME):  # the same for every member
        listing = folders[0] / name
        if listing.exists():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(listing, tmp)
        else:
            (out / name).unlink(missing_ok=True)
    bundles = [load_model(f / "model.pt") for f in folders]
    info = {k: v for k, v in bundles[0].info.items() if k != "test_metrics"}
    info.update(
        test_metrics=metrics["test"],
        ensemble={
            k: metrics["ensemble"][k] for k in ("members", "seeds", "split_seed", "std_ddof")
        },
    )
    save_ensemble(out / "model.pt", EnsembleBundle(bundles, info))
    if config.plots and not classifier:
        truth = parts[0]["test_truth"]
        model = f"{model_label(str(metrics['init']))}, mean of {len(bundles)}"
        parity_plot(
            truth,
            forward(mean),
            out / "parity.png",
            metrics["target"],
            metrics["unit"],
            model,
            config.target_transform,
        )
    return metrics
