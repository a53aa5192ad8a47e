"""What a model file is: ``crystaltwins info MODEL`` (the CLI only prints :meth:`ModelInfo.lines`).

The file is loaded the usual way (``weights_only``, every entry checked against its weights
before anything is built); nothing is run on it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystaltwins.evaluation.tasks import known_unit, metric_unit, value_unit
from crystaltwins.models.checkpoint import (
    EnsembleBundle,
    ModelBundle,
    load_predictor,
    resolve_model_path,
)
from crystaltwins.models.property_model import aux_target_columns
from crystaltwins.models.provenance import labelled_hashes


@dataclass
class ModelInfo:
    """A model file described: what it is, how it sees crystals, what it was trained on.

    :param kind: ``"pre-trained encoder"``, ``"property model"``, ``"ensemble of K property
        models"`` or ``"published Crystal Twins encoder"``.
    :param metrics: test metrics (MAE, RMSE, R², count; accuracy for a classifier).
    """

    path: Path
    kind: str
    encoder: str
    graph: str
    element_features: str
    parameters: int
    #: the encoder's alone (of one member): ``parameters`` adds the heads (and members)
    encoder_parameters: int = 0
    #: the roles of the heads on the encoder: ``property``, or ``projection`` / ``predictor``
    heads: list[str] = field(default_factory=list)
    target: str = ""
    unit: str = ""
    task: str = ""
    target_transform: str = "none"
    aux_targets: list[str] = field(default_factory=list)
    started_from: str = ""
    objective: str = ""
    augmentations: str = ""
    data: list[str] = field(default_factory=list)
    crystals: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    #: what its training left out on purpose (a shipped model: the benchmark's test crystals)
    held_out: str = ""
    #: how many crystals' labels its file records it learned from (hashed ids; -1: not recorded)
    labelled_recorded: int = -1

    def _whole(self) -> str:
        """What ``parameters`` counts: the encoder and its heads (every member's)."""
        names = {"property": "head", "projection": "projector", "predictor": "predictor"}
        parts = ["encoder", *(names.get(role, role) for role in self.heads)]
        text = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        return ("every member's " if self.kind.startswith("ensemble") else "") + text

    def lines(self) -> list[str]:
        """The description, one ``name: value`` per line."""
        rows = [
            ("model", str(self.path)),
            ("type", self.kind),
            (
                "encoder",
                f"{self.encoder}, {self.encoder_parameters or self.parameters:,} parameters",
            ),
            ("parameters", f"{self.parameters:,} in all ({self._whole()})"),
            ("graphs", self.graph),
            ("element features", self.element_features),
        ]
        if self.target:
            what = self.target + (f" ({self.unit})" if self.unit else " (unit not recorded)")
            if self.task == "classification":
                what = f"{self.target} (binary classification)"
            elif self.target_transform != "none":
                what += f", learnt as {self.target_transform}"
            rows.append(("target", what))
        if self.aux_targets:
            rows.append(
                (
                    "also learned",
                    ", ".join(self.aux_targets)
                    + " (auxiliary targets: predict writes them as predicted_<column>, "
                    "not validated by its run)",
                )
            )
        if self.started_from:
            rows.append(("started from", self.started_from))
        if self.objective:
            rows.append(("objective", self.objective))
        if self.augmentations:
            rows.append(("augmentations", self.augmentations))
        if self.data:
            rows.append(("training data", ", ".join(self.data)))
        if self.crystals:
            sizes = ", ".join(f"{k} {v:,}" for k, v in self.crystals.items())
            rows.append(("crystals", sizes))
        if self.held_out:
            rows.append(("held out", self.held_out))
        if self.labelled_recorded >= 0:
            rows.append(
                (
                    "labels learned",
                    f"{self.labelled_recorded:,} crystals' ids recorded (hashed): a run starting "
                    "from it on the same data counts its validation and test crystals among them",
                )
            )
        if self.metrics:
            rows.append(("test metrics", self._metrics_text()))
        return [f"{name}: {value}" for name, value in rows]

    def _metrics_text(self) -> str:
        unit = metric_unit(self.unit, self.target_transform)
        parts = []
        for name in ("mae", "rmse", "r2", "accuracy", "roc_auc"):
            if name in self.metrics:
                value = f"{self.metrics[name]:.4g}"
                with_unit = name in ("mae", "rmse") and unit
                parts.append(
                    f"{name.upper() if name != 'r2' else 'R²'} {value}"
                    + (f" {unit}" if with_unit else "")
                )
        if "count" in self.metrics:
            parts.append(f"on {int(self.metrics['count']):,} crystals")
        return ", ".join(parts)


def describe_model(
    model: str | os.PathLike, atom_init: str | os.PathLike | None = None
) -> ModelInfo:
    """Describe a model file, a run folder holding ``model.pt``, or a shipped model's name.

    A run folder's ``metrics.json`` fills in what older model files did not record (unit, sizes).

    :raises FileNotFoundError, ValueError: as :func:`~crystaltwins.models.checkpoint.load_model`.
    """
    path = resolve_model_path(model)
    loaded = load_predictor(path, atom_init=atom_init)
    members = loaded.members if isinstance(loaded, EnsembleBundle) else [loaded]
    first: ModelBundle = members[0]
    info: dict[str, Any] = {
        **first.info,
        **(loaded.info if isinstance(loaded, EnsembleBundle) else {}),
    }
    run_metrics = _run_metrics(path)
    settings = first.graph_settings
    described = ModelInfo(
        path=path,
        kind=_kind(loaded),
        encoder=_encoder_text(first.encoder),
        graph=f"{settings.max_neighbors} nearest neighbours within {settings.radius:g} Å",
        element_features=first.featurizer.name,
        parameters=sum(
            sum(p.numel() for p in module.parameters())
            for member in members
            for module in (member.encoder, *member.heads().values())
        ),
        encoder_parameters=sum(p.numel() for p in first.encoder.parameters()),
        heads=list(first.heads()),
    )
    if first.kind == "finetuned":
        targets = info.get("targets")
        learned = str(targets[0]) if isinstance(targets, list) and targets else ""
        # the label column (G_VRH), not the learned transform of it (log10(G_VRH))
        column = str(info.get("target_column") or learned)
        unit = (
            info.get("unit")
            or run_metrics.get("unit")
            or known_unit(info.get("data_source"), column)
        )
        described.target = column
        described.unit = value_unit(str(unit or ""))
        described.task = str(info.get("task", "regression"))
        described.target_transform = str(info.get("target_transform", "none"))
        described.aux_targets = aux_target_columns(info)
        init = str(info.get("init", ""))
        described.started_from = (
            "random weights (CGCNN from scratch)" if init == "scratch" else init
        )
        described.data = [str(info["data_source"])] if info.get("data_source") else []
        described.metrics = _numbers(info.get("test_metrics") or run_metrics.get("test"))
        labelled = labelled_hashes(info)
        if labelled is not None:
            described.labelled_recorded = len(labelled)
        held_out = info.get("held_out")
        if isinstance(held_out, dict) and held_out.get("what"):
            count = held_out.get("crystals")
            counted = f"{int(count):,} crystals, " if _finite(count) else ""
            described.held_out = f"{counted}the {held_out['what']}"
    else:
        described.objective = str(info.get("objective", ""))
        augment = info.get("augmentations")
        described.augmentations = (
            ",".join(str(a) for a in augment) if isinstance(augment, list) else str(augment or "")
        )
        sources = info.get("data_sources")
        described.data = [str(d) for d in sources] if isinstance(sources, list) else []
        if info.get("source") and not described.data:  # a published file: where it came from
            described.data = [str(info["source"])]
    described.crystals = {
        k: int(v) for k, v in _numbers(info.get("crystals") or run_metrics.get("crystals")).items()
    }
    return described


def _numbers(entry: Any) -> dict[str, float]:
    """The finite numeric entries of a dict from a model file or ``metrics.json`` (anything else
    in it, or an entry that is no dict, is left out rather than trusted)."""
    if not isinstance(entry, dict):
        return {}
    return {str(k): float(v) for k, v in entry.items() if _finite(v)}


def _finite(value: Any) -> bool:
    """A number (not a bool) that is finite as a float (``10**400`` is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _encoder_text(encoder: Any) -> str:
    """``"CGCNN, 3 convolutions, atom features 64, crystal embedding 128"``; other encoders:
    their class name and settings."""
    name = type(encoder).__name__.removesuffix("Encoder")
    config = dict(getattr(encoder, "config", {}) or {})
    if {"n_conv", "atom_fea_len", "h_fea_len"} <= set(config):
        return (
            f"{name}, {config['n_conv']} convolutions, atom features {config['atom_fea_len']}, "
            f"crystal embedding {config['h_fea_len']}"
        )
    settings = ", ".join(f"{k} {v}" for k, v in config.items() if not isinstance(v, dict))
    return f"{name}, {settings}" if settings else name


def _kind(loaded: ModelBundle | EnsembleBundle) -> str:
    if isinstance(loaded, EnsembleBundle):
        return f"ensemble of {len(loaded.members)} property models (predict: mean and std)"
    if loaded.kind == "finetuned":
        return "property model (fine-tuned; predict, embed)"
    if loaded.info.get("published"):
        return "published Crystal Twins encoder (pre-trained; embed, finetune --pretrained)"
    return "pre-trained encoder (embed, finetune --pretrained)"


def _run_metrics(path: Path) -> dict[str, Any]:
    """The ``metrics.json`` beside a run's ``model.pt``, or ``{}``."""
    metrics = path.parent / "metrics.json"
    if path.name != "model.pt" or not metrics.is_file():
        return {}
    try:
        data = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
