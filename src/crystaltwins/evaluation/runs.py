"""Runs that train and then report: ``finetune`` = train a property model
(:mod:`crystaltwins.training.finetune`) + score it and write its results
(:mod:`crystaltwins.evaluation.report`); an ensemble trains its members the same way, then
combines them. ``ct.finetune`` and ``crystaltwins finetune`` call :func:`finetune`.
:func:`finetune_together` trains several runs in one loop
(:mod:`crystaltwins.training.members`), then reports each the same way."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L

from crystaltwins.evaluation.report import combine_members, report_run
from crystaltwins.io.readers import check_target_columns
from crystaltwins.training.common import is_main_process
from crystaltwins.training.configs import FinetuneConfig
from crystaltwins.training.ensemble import train_members
from crystaltwins.training.finetune import train_property_model
from crystaltwins.training.members import MemberResult, check_together, train_runs_together
from crystaltwins.training.run_folder import claimed_folder_of


def finetune(config: FinetuneConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Check ``config``, then fine-tune (or train from scratch, or train an ensemble) in its
    run folder; returns the metrics written to ``RUN_DIR/metrics.json`` (``{}`` on ranks > 0).

    :param callbacks: extra Lightning callbacks (e.g. a progress display).
    """
    config.validate()
    check_target_columns(config.data, [config.target, *config.aux_targets], config.cif_column)
    with claimed_folder_of(config, is_main_process()):
        if config.ensemble > 1:
            folders = train_members(
                config, finetune_member, callbacks, run_together=finetune_members_together
            )
            return combine_members(config, folders) if is_main_process() else {}
        return finetune_in_claimed_folder(config, callbacks)


def finetune_in_claimed_folder(
    config: FinetuneConfig, callbacks: list[L.Callback] | None = None, member: bool = False
) -> dict[str, Any]:
    """One run, its folder claimed: train, then report (``member``: an ensemble's member,
    which also writes its predictions of every split)."""
    return report_run(train_property_model(config, callbacks), member=member)


def finetune_member(config: FinetuneConfig, callbacks: list[L.Callback] | None) -> None:
    """An ensemble member's run (see :func:`crystaltwins.training.ensemble.train_members`)."""
    finetune_in_claimed_folder(config, callbacks, member=True)


def finetune_together(
    configs: Sequence[FinetuneConfig],
    member: bool = False,
    claim: bool = True,
    on_epoch: Callable[[int, list[MemberResult]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the fine-tuning runs ``configs`` (different seeds, splits, initialisations, data) in
    one process and one training loop
    (:func:`~crystaltwins.training.members.train_runs_together`), then report each as a single
    run (:func:`~crystaltwins.evaluation.report.report_run`); returns each run's metrics.

    :param member: the runs are an ensemble's members (also write their predictions of every
        split).
    :param claim: check every config and claim its run folder here (``False``: the caller did).
    :param on_epoch: called after every epoch (see
        :func:`~crystaltwins.training.members.train_together`).
    """
    with contextlib.ExitStack() as claimed:
        if claim:
            for config in configs:
                config.validate()
            check_together(configs)  # before any folder is claimed
            for config in configs:
                claimed.enter_context(claimed_folder_of(config, is_main_process()))
        runs = train_runs_together(configs, on_epoch)
        return [report_run(run, member=member) for run in runs]


def finetune_members_together(members: list[FinetuneConfig]) -> None:
    """An ensemble's unfinished members, their folders claimed, trained together (see
    :func:`crystaltwins.training.ensemble.train_members`)."""
    finetune_together(members, member=True, claim=False)


__all__ = ["finetune", "finetune_in_claimed_folder", "finetune_together"]
