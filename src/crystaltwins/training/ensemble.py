"""Ensembles of fine-tuned models (``finetune --ensemble K``): K runs, one split, their mean.

Member ``k`` (0 .. K-1) is an ordinary fine-tuning run in ``RUN_DIR/members/<k>`` with seed
``seed + k`` (its initialisation and batch order) and the run's split seed (``split_seed``, by
default ``seed``), so every member trains, validates and tests on the same crystals; member 0
is the single run of the same settings. Then the run combines them, in ``RUN_DIR``:

- ``test_predictions.csv``: a single run's columns, ``prediction`` being the members' mean (in
  the target's own units; P(class 1) for a classifier), then ``std`` (their population
  standard deviation, ddof 0) and ``member_<k>`` (each member's own prediction);
- ``metrics.json``: a single run's keys, computed on the mean (a ``log10`` run's metrics on
  ``log10`` of the mean, as a single run's on ``log10`` of its prediction), ``epochs_run`` the
  most any member ran, ``best_epoch`` ``null`` (see the members'), ``seconds`` their sum; and
  ``ensemble``: ``members``, ``seeds``, ``split_seed``, ``std_ddof``, the members' test
  metrics, and the calibration of the spread on the test split: ``within_1_std`` and
  ``within_2_std`` (the fraction of crystals whose error ``|mean - target|`` is at most 1 and 2
  standard deviations) and ``spearman_abs_error_std`` (Spearman's rank correlation of the
  error with the std: positive when the spread points at the larger errors). A classifier's
  error is ``|P(class 1) - class|``;
- ``model.pt``: one file holding every member (``load_predictor`` / ``predict`` read it).

``--resume`` skips finished members (their ``model.pt`` and predictions written, for the same
number of epochs) and continues the others.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml

from crystaltwins.evaluation.metrics import (
    classification_metrics,
    metrics_json,
    regression_metrics,
)
from crystaltwins.models.checkpoint import EnsembleBundle, load_model, save_ensemble
from crystaltwins.models.targets import TRANSFORMS
from crystaltwins.training.common import is_main_process, main_print, write_config
from crystaltwins.training.finetune import (
    MEMBER_PREDICTIONS,
    FinetuneConfig,
    _finetune_in_claimed_folder,
    _write_predictions,
    split_seed,
)
from crystaltwins.training.run_folder import claimed_run_folder

#: The folder of an ensemble's members, in its run folder.
MEMBERS = "members"
#: Population standard deviation of the members' predictions.
STD_DDOF = 0
_SPLITS = ("train", "val", "test")


def member_config(config: FinetuneConfig, k: int) -> FinetuneConfig:
    """The settings of member ``k`` of the ensemble ``config``."""
    return dataclasses.replace(
        config,
        out=str(Path(config.out) / MEMBERS / str(k)),
        seed=config.seed + k,
        split_seed=split_seed(config),
        ensemble=1,
        plots=False,
        overwrite=False,
    )


def _finished(member: FinetuneConfig) -> bool:
    """Whether member's run is complete, for as many epochs as asked now."""
    out = Path(member.out)
    if not ((out / "model.pt").is_file() and (out / MEMBER_PREDICTIONS).is_file()):
        return False
    try:
        stored = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(stored, dict) and stored.get("epochs") == member.epochs


def finetune_ensemble(
    config: FinetuneConfig, callbacks: list[L.Callback] | None = None
) -> dict[str, Any]:
    """Train (or finish) the members of ``config`` (its run folder claimed), then combine them;
    returns the metrics written to ``RUN_DIR/metrics.json``."""
    out = Path(config.out)
    write_config(out, config)
    members = [member_config(config, k) for k in range(config.ensemble)]
    if config.members_together:  # one process, one loop, stacked weights
        from crystaltwins.training.members import finetune_together

        pending = [m for m in members if not _finished(m)]
        main_print(f"ensemble: {len(pending)} of {len(members)} members trained together")
        if pending:
            finetune_together(pending, member=True)
        members_left: list[FinetuneConfig] = []
    else:
        members_left = members
    for k, member in enumerate(members_left):
        where = f"ensemble member {k + 1}/{config.ensemble} (seed {member.seed}, {member.out})"
        if _finished(member):
            main_print(f"{where}: finished earlier, kept")
            continue
        main_print(f"{where}")
        with claimed_run_folder(
            member.out, member, resume=member.resume, main_process=is_main_process()
        ):
            _finetune_in_claimed_folder(member, callbacks, member=True)
    if not is_main_process():
        return {}
    return combine_members(config, [Path(m.out) for m in members])


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
        "split_seed": split_seed(config),
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
    _write_predictions(
        out / "test_predictions.csv",
        parts[0]["test_ids"],
        test_target,
        mean,
        config.task,
        transformed,
        extra,
    )
    (out / "metrics.json").write_text(metrics_json(metrics))
    listing = folders[0] / "invalid_targets.csv"
    (out / "invalid_targets.csv").unlink(missing_ok=True)
    if listing.exists():
        shutil.copyfile(listing, out / "invalid_targets.csv")
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
        from crystaltwins.evaluation.plots import parity_plot

        truth = parts[0]["test_truth"]
        parity_plot(truth, forward(mean), out / "parity.png", metrics["target"])
    return metrics
