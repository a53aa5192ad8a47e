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

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from crystaltwins.training.common import is_main_process, main_print, write_config
from crystaltwins.training.configs import FinetuneConfig
from crystaltwins.training.run_folder import (
    check_epochs_left,
    claimed_folder_of,
    claimed_run_folder,
)

#: The folder of an ensemble's members, in its run folder.
MEMBERS = "members"
#: Population standard deviation of the members' predictions.
STD_DDOF = 0
#: What an ensemble member writes besides a run's files: its predictions of every split.
MEMBER_PREDICTIONS = "member_predictions.npz"


def member_config(config: FinetuneConfig, k: int) -> FinetuneConfig:
    """The settings of member ``k`` of the ensemble ``config``."""
    return dataclasses.replace(
        config,
        out=str(Path(config.out) / MEMBERS / str(k)),
        seed=config.seed + k,
        split_seed=config.split_seed_value,
        ensemble=1,
        plots=False,
        overwrite=False,
    )


def _finished(member: FinetuneConfig) -> bool:
    """Whether member's run is complete, for as many epochs as asked now: the epochs its
    ``metrics.json`` was written for (its ``config.yaml`` is rewritten as soon as a longer run
    of it starts, before that run replaces the model)."""
    out = Path(member.out)
    if not ((out / "model.pt").is_file() and (out / MEMBER_PREDICTIONS).is_file()):
        return False
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        stored = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):  # UnicodeDecodeError is a ValueError
        return False
    if not isinstance(metrics, dict) or not isinstance(stored, dict):
        return False
    if "epochs" in metrics:
        return metrics["epochs"] == member.epochs
    # written before metrics.json recorded its epochs: all of them run, or stopped early
    ran = metrics.get("epochs_run")
    return stored.get("epochs") == member.epochs and (
        ran == member.epochs or bool(stored.get("early_stopping"))
    )


def train_members(
    config: FinetuneConfig,
    run_member: Callable[[FinetuneConfig, list[L.Callback] | None], Any],
    callbacks: list[L.Callback] | None = None,
    run_together: Callable[[list[FinetuneConfig]], Any] | None = None,
) -> list[Path]:
    """Train (or finish) the members of ``config`` (its run folder claimed), each by
    ``run_member(member_config, callbacks)`` in its own claimed folder (a run that trains and
    writes its results: :func:`crystaltwins.evaluation.runs.finetune_in_claimed_folder`);
    returns the members' folders (combined by :func:`crystaltwins.evaluation.report.combine_members`).

    :param run_together: with ``config.members_together``: runs the unfinished members at once,
        their folders claimed (:func:`crystaltwins.evaluation.runs.finetune_together`)."""
    members = [member_config(config, k) for k in range(config.ensemble)]
    if config.resume:  # refused before the ensemble's config.yaml is rewritten
        for member in members:
            check_epochs_left(Path(member.out), member)
    write_config(Path(config.out), config)
    if config.members_together and run_together is not None:
        pending = [m for m in members if not _finished(m)]
        main_print(f"ensemble: {len(pending)} of {len(members)} members trained together")
        if pending:
            with contextlib.ExitStack() as claimed:
                for member in pending:
                    claimed.enter_context(claimed_folder_of(member, is_main_process()))
                run_together(pending)
        return [Path(m.out) for m in members]
    for k, member in enumerate(members):
        where = f"ensemble member {k + 1}/{config.ensemble} (seed {member.seed}, {member.out})"
        if _finished(member):
            main_print(f"{where}: finished earlier, kept")
            continue
        main_print(f"{where}")
        with claimed_run_folder(
            member.out, member, resume=member.resume, main_process=is_main_process()
        ):
            run_member(member, callbacks)
    return [Path(m.out) for m in members]
