"""Runs that train and then report: ``finetune`` = train a property model
(:mod:`crystaltwins.training.finetune`) + score it and write its results
(:mod:`crystaltwins.evaluation.report`); an ensemble trains its members the same way, then
combines them. ``ct.finetune`` and ``crystaltwins finetune`` call :func:`finetune`."""

from __future__ import annotations

from typing import Any

import lightning as L

from crystaltwins.evaluation.report import combine_members, report_run
from crystaltwins.training.common import is_main_process
from crystaltwins.training.configs import FinetuneConfig
from crystaltwins.training.ensemble import train_members
from crystaltwins.training.finetune import train_property_model
from crystaltwins.training.run_folder import claimed_folder_of


def finetune(config: FinetuneConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Check ``config``, then fine-tune (or train from scratch, or train an ensemble) in its
    run folder; returns the metrics written to ``RUN_DIR/metrics.json`` (``{}`` on ranks > 0).

    :param callbacks: extra Lightning callbacks (e.g. a progress display).
    """
    config.validate()
    with claimed_folder_of(config, is_main_process()):
        if config.ensemble > 1:
            folders = train_members(config, finetune_member, callbacks)
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


__all__ = ["finetune", "finetune_in_claimed_folder"]
