"""Fine-tuning a (pre-trained or fresh) CGCNN encoder with an MLP head on a labelled dataset.

``from_scratch=True`` is the supervised CGCNN baseline: same architecture and protocol,
random initialisation. Training stops at a trained model (:func:`train_property_model`); its
scoring, test predictions and plots are :mod:`crystaltwins.evaluation.report`'s, and
:func:`crystaltwins.evaluation.runs.finetune` (``ct.finetune``) composes the two.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from crystaltwins.data.cache import GraphCache
from crystaltwins.data.dataset import CrystalGraphDataset, GraphCollator
from crystaltwins.data.sources import prepare_caches
from crystaltwins.data.splits import (
    Split,
    cap_split,
    check_split,
    matbench_split,
    min_crystals_for_split,
    random_split,
    split_from_files,
    split_from_labels,
)
from crystaltwins.graph.atom_features import AtomFeaturizer, featurizer_for
from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.atomic import atomic_path
from crystaltwins.models.checkpoint import ModelBundle, load_model, resolve_model_path, save_model
from crystaltwins.models.heads import PropertyHead
from crystaltwins.models.pretrained import SHIPPED_MODELS, canonical_model_name
from crystaltwins.models.property_model import AUX_TARGETS_KEY, PropertyModel, Target
from crystaltwins.models.provenance import (
    EARLIER_KEY,
    LABELLED_KEY,
    earlier_records,
    labelled_hashes,
    labelled_record,
    seen_ids,
    source_key,
)
from crystaltwins.models.targets import TRANSFORMS
from crystaltwins.training.common import (
    AtomicCheckpointIO,
    adam,
    check_pretrained_encoder,
    check_resumed_data,
    check_resumed_state,
    execution_change,
    fit,
    is_main_process,
    main_print,
    make_trainer,
    new_encoder,
    record_data_digest,
    record_execution,
    resident_device,
    resume_path,
    run_graph_settings,
    training_seconds,
    write_config,
)
from crystaltwins.training.configs import DEFAULT_ENCODER_LR_FACTOR, FinetuneConfig, field_default
from crystaltwins.training.epoch_metrics import EpochMeans
from crystaltwins.training.run_folder import SEEN_BY_START_NAME
from crystaltwins.training.sampling import EpochSampler

__all__ = [
    "FinetuneConfig",
    "FinetuneModule",
    "PlannedSplit",
    "PreparedRun",
    "TrainedRun",
    "plan_split",
    "prepare_run",
    "save_property_model",
    "split_seed",
    "train_property_model",
]


def split_seed(config: FinetuneConfig) -> int:
    """The seed of the random split (and of ``max_train`` / ``max_eval`` subsets)."""
    return config.split_seed_value


class FinetuneModule(L.LightningModule):
    """Trains a :class:`~crystaltwins.models.property_model.PropertyModel`: regression on
    standardised (transformed) targets (MSE), or binary classification (cross-entropy on 2
    logits).

    The model's encoder and head are this module's ``encoder`` and ``head`` (the names of the
    checkpoints' weights); :attr:`model` is the property model itself, whose conversions give the
    metrics' and the user's units.

    ``aux_targets``: more standardised targets the head learns in its outputs ``1, 2, ..``
    (multi-task training): their masked mean squared error, times ``aux_weight``, is added to
    the loss; the metrics are the target's alone. The logged ``aux_loss`` is the mean squared
    error over the epoch's known auxiliary labels (batches weighted by how many they hold).

    ``encoder_anchor`` (L2-SP, Li et al. 2018): ``encoder_anchor / 2`` times the squared
    distance of the encoder's trainable weights from those it started with is added to the
    training loss (not to the logged ``loss``); a resumed run anchors to the same starting
    weights, taken again from the pre-trained model.

    ``freeze_encoder_epochs``: in epochs ``0 .. N-1`` the encoder is a fixed feature extractor
    (eval mode, so BatchNorm normalises with its stored statistics and leaves them unchanged; no
    gradients, so Adam neither moves it nor starts its moments); from epoch ``N`` on it trains
    like an unfrozen one. ``warmup_epochs``: every group's learning rate is ``lr_group *
    min(1, (s + 1) / S)`` at optimiser step ``s`` (0-based), ``S`` the steps of the warm-up
    epochs (a Lightning step scheduler, checkpointed with the run). ``lr_schedule="cosine"``:
    after the warm-up's ``W`` steps, the factor is ``(1 + cos(pi (s - W) / (T - W))) / 2`` at
    step ``s`` of the run's ``T`` steps (0 after the last). Both follow the epoch and step
    counters that a resumed run restores, so a resumed run trains as an uninterrupted one.
    """

    def __init__(
        self,
        model: PropertyModel,
        lr: float = field_default(FinetuneConfig, "lr"),
        encoder_lr_factor: float = DEFAULT_ENCODER_LR_FACTOR,
        weight_decay: float = field_default(FinetuneConfig, "weight_decay"),
        freeze_encoder_epochs: int = field_default(FinetuneConfig, "freeze_encoder_epochs"),
        warmup_epochs: int = field_default(FinetuneConfig, "warmup_epochs"),
        lr_schedule: str = field_default(FinetuneConfig, "lr_schedule"),
        aux_targets: list[dict[str, Any]] | None = None,
        aux_weight: float = field_default(FinetuneConfig, "aux_weight"),
        encoder_anchor: float = field_default(FinetuneConfig, "encoder_anchor"),
    ) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.head = model.head
        self.__dict__["model"] = model  # the same modules, not registered twice
        self.task = model.target.task
        self.lr = lr
        self.encoder_lr_factor = encoder_lr_factor
        self.weight_decay = weight_decay
        self.freeze_encoder_epochs = freeze_encoder_epochs
        self.warmup_epochs = warmup_epochs
        self.lr_schedule = lr_schedule
        #: a resumed checkpoint's schedule step counts (set by :meth:`on_load_checkpoint`)
        self._stored_schedule: dict[str, Any] | None = None
        #: Auxiliary targets (``column``, ``mean``, ``std``): head outputs ``1 ..``, trained
        #: on standardised values in ``batch.targets[:, 1:]`` (NaN where missing).
        self.aux_targets = list(aux_targets or [])
        self.aux_weight = aux_weight
        # The encoder's trainable weights (a frozen epoch switches off only these).
        self._encoder_trainable = [p for p in self.encoder.parameters() if p.requires_grad]
        #: sha256 of the crystals and labels the run trains, selects and tests on (set by
        #: :func:`prepare_run`): a resumed run must see the same data.
        self.data_digest: str | None = None
        self.encoder_anchor = encoder_anchor
        if encoder_anchor:  # the starting weights, moved with the module, not checkpointed
            for k, parameter in enumerate(self._encoder_trainable):
                self.register_buffer(f"_anchor{k}", parameter.detach().clone(), persistent=False)

    model: PropertyModel

    def forward(self, batch: CrystalGraphBatch) -> torch.Tensor:
        """Predictions ``(num_crystals,)`` in the target's own units (any target transform
        undone, e.g. GPa for a ``log10`` run on G_VRH), or P(class 1) for classification."""
        return self.model.in_target_units(self.model(batch))

    def _step(self, batch: CrystalGraphBatch, stage: str) -> torch.Tensor:
        target = batch.targets[:, 0]
        out = self.model(batch)
        weights: tuple[torch.Tensor | None, ...] | None = None
        if self.task == "classification":
            loss = F.cross_entropy(out, target.long())
            error_rate = (out.argmax(-1) != target.long()).float().mean()
            # Checkpoints monitor val_mae: for classification, the error rate.
            values = (loss, error_rate, 1 - error_rate)
        else:
            loss = F.mse_loss(out[:, 0], self.model.standardise(target))
            mae = (self.model.transformed(out) - target).abs().mean()
            values = (loss, mae)
            if self.aux_targets:
                aux = auxiliary_loss(out[:, 1:], batch.targets[:, 1:])
                loss = loss + self.aux_weight * aux
                values = (loss, mae, aux)
                # aux is a mean over the batch's known auxiliary labels: weighted by them
                weights = (None, None, torch.isfinite(batch.targets[:, 1:]).sum())
        self.epoch_metrics.add(stage, batch.num_crystals, values, weights)
        if self.encoder_anchor and stage == "train":
            loss = loss + self.encoder_anchor / 2 * self.anchor_distance()
        return loss

    def anchor_distance(self) -> torch.Tensor:
        """Squared distance (a scalar) of the encoder's trainable weights from its starting
        weights; 0 when the run has no ``encoder_anchor``."""
        distance = torch.zeros((), device=self.device)
        if self.encoder_anchor:
            for k, parameter in enumerate(self._encoder_trainable):
                distance = distance + ((parameter - getattr(self, f"_anchor{k}")) ** 2).sum()
        return distance

    def _anchor_digest(self) -> str:
        """sha256 of the anchors: a resumed run must anchor to the weights it started from."""
        digest = hashlib.sha256()
        for k in range(len(self._encoder_trainable)):
            anchor = getattr(self, f"_anchor{k}").detach().to("cpu", torch.float64).contiguous()
            digest.update(anchor.numpy().tobytes())
        return digest.hexdigest()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.encoder_anchor:
            checkpoint["encoder_anchor_sha256"] = self._anchor_digest()
        record_data_digest(checkpoint, self.data_digest)
        record_execution(checkpoint, self.trainer)

    @cached_property
    def epoch_metrics(self) -> EpochMeans:
        names = ["loss", "mae"] + (["accuracy"] if self.task == "classification" else [])
        names += ["aux_loss"] if self.aux_targets else []
        return EpochMeans(names, progress="mae")

    def training_step(self, batch: CrystalGraphBatch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.epoch_metrics.log(self, "train")
        return loss

    def validation_step(self, batch: CrystalGraphBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.epoch_metrics.log(self, "val")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed checkpoint must fit this model, and an anchored run must anchor to the
        weights it started from (one line naming the checkpoint otherwise)."""
        check_resumed_state(self, checkpoint, self.trainer.ckpt_path)
        if (changed := execution_change(checkpoint, self.trainer)) is not None:
            main_print(changed)
        check_resumed_data(
            checkpoint,
            self.data_digest,
            self.trainer.ckpt_path,
            "other crystals or labels in its training, validation or test set",
        )
        schedulers = checkpoint.get("lr_schedulers") or [{}]
        stored = (schedulers[0].get("lr_lambdas") or [None])[0] if schedulers[0] else None
        # the schedule's step counts as trained so far (checked in configure_optimizers)
        self._stored_schedule = stored if isinstance(stored, dict) and stored else None
        saved = checkpoint.get("encoder_anchor_sha256")
        if self.encoder_anchor and saved is not None and saved != self._anchor_digest():
            raise ValueError(
                f"{self.trainer.ckpt_path}: this run started from other pre-trained weights than "
                "the model file now holds (replaced since?): its encoder_anchor would pull "
                "elsewhere; start a new run"
            )

    @property
    def encoder_frozen(self) -> bool:
        """Whether the current epoch is one of the first ``freeze_encoder_epochs``."""
        return self.current_epoch < self.freeze_encoder_epochs

    def _freeze_by_requires_grad(self) -> bool:
        """Whether a frozen epoch skips the encoder's backward pass (one process); a
        data-parallel run keeps every gradient its DDP wrapper expects and drops the encoder's
        before each optimiser step instead (the same updates)."""
        return self.trainer.world_size == 1

    def on_train_epoch_start(self) -> None:
        if not self.freeze_encoder_epochs:
            return
        frozen = self.encoder_frozen
        self.encoder.train(not frozen)  # frozen: BatchNorm uses and keeps its statistics
        if self._freeze_by_requires_grad():
            for parameter in self._encoder_trainable:
                parameter.requires_grad_(not frozen)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.freeze_encoder_epochs and self.encoder_frozen:
            for parameter in self._encoder_trainable:
                parameter.grad = None  # Adam skips it: no step, no weight decay, no moments

    def on_train_end(self) -> None:
        if self.freeze_encoder_epochs:  # a linear probe leaves a trainable model behind
            for parameter in self._encoder_trainable:
                parameter.requires_grad_(True)
            self.encoder.train(self.training)

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's two groups: the encoder's weights at ``lr * encoder_lr_factor``, the
        head's at ``lr`` (before any schedule's factor)."""
        return [
            {"params": self.encoder.parameters(), "lr": self.lr * self.encoder_lr_factor},
            {"params": self.head.parameters(), "lr": self.lr},
        ]

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = adam(self.param_groups(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.warmup_epochs and self.lr_schedule == "constant":
            return optimizer
        # Optimiser steps per epoch (this process's batches): the run's steps over its epochs.
        epochs = max(self.trainer.max_epochs, 1)
        per_epoch = int(self.trainer.estimated_stepping_batches) // epochs
        factor = LearningRateSchedule(
            warmup_steps=self.warmup_epochs * per_epoch,
            total_steps=per_epoch * epochs,
            schedule=self.lr_schedule,
        )
        stored = self._stored_schedule
        laid_out = dataclasses.asdict(factor)
        if self.lr_schedule == "constant":  # a warm-up then constant: the run's length is moot
            laid_out.pop("total_steps")
        if stored is not None and any(stored.get(k) != v for k, v in laid_out.items()):
            differs = ", ".join(
                f"{k} {stored.get(k)} -> {v}" for k, v in laid_out.items() if stored.get(k) != v
            )
            raise ValueError(
                f"{self.trainer.ckpt_path}: this run's learning-rate schedule was laid out over "
                f"other steps ({differs}: other epochs or devices): resumed, it would not train "
                "as the run it continues; resume with the epochs and devices it was made with, "
                "or start a new run"
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


@dataclass
class LearningRateSchedule:
    """:func:`learning_rate_factor` over a run's steps, as a ``LambdaLR`` factor whose step
    counts go into the checkpoint (so a resume over other steps is refused)."""

    warmup_steps: int
    total_steps: int
    schedule: str = "constant"

    def __call__(self, step: int) -> float:
        return learning_rate_factor(
            step,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            schedule=self.schedule,
        )


def learning_rate_factor(
    step: int, *, warmup_steps: int, total_steps: int, schedule: str = "constant"
) -> float:
    """Factor of every learning rate at optimiser step ``step`` (0-based): a linear warm-up
    ``(step + 1) / warmup_steps`` over the first ``warmup_steps``, then 1 (``constant``) or half
    a cosine from 1 down to 0 at ``total_steps`` (``cosine``)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def auxiliary_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``outputs`` ``(B, K)`` against standardised ``targets`` ``(B, K)``
    over the finite targets only (missing labels are NaN); 0 (with a gradient) when none is."""
    known = torch.isfinite(targets)
    squared = torch.where(known, outputs - torch.nan_to_num(targets), 0.0) ** 2
    return squared.sum() / known.sum().clamp(min=1)


def _split(config: FinetuneConfig, dataset: CrystalGraphDataset, keep: np.ndarray) -> Split:
    """Positions (into ``keep``) of train/val/test."""
    if config.split_files:
        cache = dataset.cache
        ids = cache.ids[keep]
        # listed crystals that cannot be used (unreadable, no usable label) are left out
        unusable = ({str(i) for i in cache.ids} - {str(i) for i in ids}) | cache.skipped_ids()
        left_out: list[str] = []
        split = split_from_files(ids, *config.split_files, unusable=unusable, left_out=left_out)
        if left_out:
            main_print(
                f"{len(left_out)} crystals listed in the split files cannot be used (unreadable, "
                f"or no usable {config.target!r}; see the cache's skipped.csv and the run's "
                f"invalid_targets.csv) and are left out, e.g. {left_out[:3]}"
            )
        return split
    if config.split_column:
        names = dataset.cache.metadata(config.split_column)[keep]
        blank = int(sum(not str(name).strip() for name in names))
        if blank:
            which = "1 crystal" if blank == 1 else f"{blank} crystals"
            main_print(f"{which} with no {config.split_column!r} value left out of every part")
        return split_from_labels(names, f"column {config.split_column!r}")
    if config.fold is not None:
        # matbench's folds are drawn over every row of the dataset, in its order: with any row
        # dropped, KFold over the rest would reshuffle every fold (not the leaderboard's split)
        rows = len(dataset.cache) + int(dataset.cache.manifest.get("skipped", 0))
        if len(keep) != rows:
            raise ValueError(
                f"{config.data}: matbench folds are defined over all {rows:,} rows in their "
                f"order, and {rows - len(keep):,} of them cannot be used here (unreadable, or "
                f"no usable {config.target!r}): the folds would not be matbench's; use --split"
            )
        return matbench_split(len(keep), config.fold, seed=config.split_seed_value)
    return random_split(len(keep), config.split, config.split_seed_value)


def _check_split(config: FinetuneConfig, split: Split, crystals: int) -> None:
    """Exit early (ValueError: the CLI's exit 2) when train, validation or test is empty."""
    if config.split_files:
        how, needed = "split from --split-files", None
    elif config.split_column:
        how, needed = f"split from column {config.split_column!r}", None
    elif config.fold is not None:
        how, needed = f"matbench fold {config.fold}", 5
    else:
        how = "random split " + "/".join(f"{f:g}" for f in config.split)
        needed = min_crystals_for_split(config.split)
    try:
        check_split(split, crystals, how, needed)
    except ValueError as error:
        raise ValueError(f"{config.data}: {error} with a usable {config.target!r} label") from None


def _report_invalid_targets(
    cache: GraphCache, raw: np.ndarray, usable: np.ndarray, config: FinetuneConfig, out: Path
) -> None:
    """Say which crystals have no usable label; list them in ``RUN_DIR/invalid_targets.csv``."""
    if not is_main_process():
        return
    bad = np.flatnonzero(~usable)
    ids = cache.ids
    if config.task == "classification":
        need = "a class label 0 or 1"
    elif config.target_transform == "log10":
        need = "a finite value > 0 (log10)"
    else:
        need = "a number"
    listing = out / "invalid_targets.csv"
    with atomic_path(listing) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", config.target, "problem"])
        for k in bad:
            value = float(raw[k])
            if np.isnan(value):  # the source's text is not kept: an empty cell, or not a number
                writer.writerow([ids[k], "", "missing or not a number"])
            else:
                writer.writerow([ids[k], value, f"not {need}"])
    shown = ", ".join(str(ids[k]) for k in bad[:5]) + (", ..." if len(bad) > 5 else "")
    main_print(
        f"{config.data}: {len(bad)} crystals without {need} in {config.target!r} are left out "
        f"({shown}); list: {listing}"
    )


@dataclass
class StartingPoint:
    """What a fine-tuning run starts from: element features, encoder, graph settings, and
    where they came from (the model file, or ``"scratch"``) with that file's ``info``."""

    featurizer: AtomFeaturizer
    encoder: nn.Module
    settings: GraphSettings
    init: str
    info: dict[str, Any] = field(default_factory=dict)
    #: a fine-tuned starting model's property head (``None`` otherwise)
    head: nn.Module | None = None


def starting_point(config: FinetuneConfig) -> StartingPoint:
    """The pre-trained model's encoder, features and graph settings (asking for other graph
    settings is an error), or a new encoder on the settings asked for / of a graph cache."""
    if config.pretrained:
        path = resolve_model_path(config.pretrained)  # a shipped model's name: its file
        bundle = load_model(path, atom_init=config.atom_init)
        if config.atom_init and not bundle.info.get("published"):
            main_print(f"note: --atom-init ignored: {path} carries its own element features")
        check_pretrained_encoder(config, bundle.encoder, path)
        overlap = labelled_source_overlap(bundle.info, config.data)
        if overlap and labelled_hashes(bundle.info, config.data) is None:  # else counted
            main_print(f"warning: {overlap}")
        settings = run_graph_settings(config, config.data, bundle.graph_settings)
        # a shipped model is recorded by its name (the same on every machine), a file by its path
        name = canonical_model_name(str(config.pretrained))
        init = name if name in SHIPPED_MODELS else str(path)
        head = bundle.head if bundle.kind == "finetuned" else None
        return StartingPoint(
            bundle.featurizer, bundle.encoder, settings, init, dict(bundle.info), head
        )
    featurizer = featurizer_for(config.data, config.atom_init)
    settings = run_graph_settings(config, config.data)
    encoder = new_encoder(
        featurizer,
        settings,
        config.atom_fea_len,
        config.n_conv,
        config.h_fea_len,
        name=config.encoder,
    )
    return StartingPoint(featurizer, encoder, settings, "scratch")


def labelled_source_overlap(info: dict[str, Any], data: str | Path | None) -> str | None:
    """A warning when a starting model was itself fine-tuned on labels of the file now being
    fine-tuned on (same file name): the new run's validation and test crystals may have been
    among its training crystals, which makes their MAE optimistic. ``None`` when not."""
    source = info.get("data_source")
    if not source or not data or source_key(source) != source_key(data):
        return None
    target = info.get("target_column") or ", ".join(info.get("targets", []))
    held_out = info.get("held_out", {})
    held = (
        f" (it held out the {held_out['what']})"
        if isinstance(held_out, dict) and held_out.get("what")
        else ""
    )
    return (
        f"the starting model was fine-tuned on labels ({target}) of {Path(str(data)).name}, "
        f"the data of this run{held}: test crystals it trained on give an optimistic test MAE; "
        "keep them out of its training data (e.g. --split-files), or start from another model"
    )


def check_seen_by_start(
    config: FinetuneConfig, start: StartingPoint, ids: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Count this run's validation and test crystals (``ids``: part → crystal ids) whose
    labels the starting model learned from, when its file records them and it was fine-tuned
    on the same data file; say so, and list them in ``OUT/seen_by_starting_model.csv``.
    Returns the entry for ``metrics.json`` (``{}`` when nothing could be counted)."""
    out = Path(config.out)
    (out / SEEN_BY_START_NAME).unlink(missing_ok=True)  # not a stale list from an earlier run
    seen = {part: seen_ids(start.info, part_ids, config.data) for part, part_ids in ids.items()}
    if any(found is None for found in seen.values()):
        return {}
    counts = {part: len(found or []) for part, found in seen.items()}
    sizes = ", ".join(f"{len(ids[p]):,} {p}" for p in ids)
    if not any(counts.values()):
        main_print(
            f"checked: the starting model learned labels of {source_key(config.data)}, "
            f"none of this run's {sizes} crystals among them"
        )
    else:
        rows = [[i, part] for part, found in seen.items() for i in found or []]
        with atomic_path(out / SEEN_BY_START_NAME) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([["id", "part"], *rows])
        found_text = ", ".join(f"{counts[p]:,} of {len(ids[p]):,} {p}" for p in ids)
        effect = (
            "their MAE is optimistic"
            if counts.get("test")
            else "none of the test crystals, but the validation MAE (which picks the best epoch) "
            "is optimistic"
        )
        main_print(
            f"warning: the starting model (or one it started from) learned the labels of "
            f"{found_text} crystals of this run: {effect}; listed in {out / SEEN_BY_START_NAME}"
        )
    return {"seen_by_starting_model": counts}


@dataclass
class PlannedSplit:
    """The crystals of a run: labels, which are usable, and the (uncapped) split.

    :param raw: ``(N,)`` the label column, in the target's own units.
    :param keep: ``(M,)`` cache positions of the crystals with a usable label.
    :param split: positions into ``keep`` of train / val / test.
    """

    raw: np.ndarray
    usable: np.ndarray
    keep: np.ndarray
    split: Split


def plan_split(config: FinetuneConfig, cache: GraphCache, check: bool = True) -> PlannedSplit:
    """The split of a run on ``cache``, planned once: the crystals with a usable label, split
    by ``split_files`` / ``split_column`` / ``fold`` / the random ``split`` (checked: no part
    empty, unless ``check`` is false); before the ``max_train`` / ``max_eval`` caps."""
    if config.target not in cache.label_names:
        raise KeyError(
            f"{config.data}: no numeric label column {config.target!r}; available: {cache.label_names}"
        )
    raw = cache.labels([config.target])[:, 0]
    usable = TRANSFORMS[config.target_transform][2](raw)
    if config.task == "classification":  # binary: the classes are 0 and 1
        usable &= (raw == 0) | (raw == 1)
    keep = np.flatnonzero(usable)
    split = _split(config, CrystalGraphDataset(cache), keep)
    if check:
        _check_split(config, split, len(keep))
    return PlannedSplit(raw, usable, keep, split)


@dataclass
class TrainedRun:
    """A trained property model and what it was trained on (the best validation epoch's
    weights), for :mod:`crystaltwins.evaluation.report` to score and save.

    :param values: ``(N,)`` the (transformed) targets the model learned, NaN where unusable.
    :param main: whether this process writes the run's files (rank 0).
    :param notes: more entries for its ``metrics.json`` (e.g. how it was trained).
    """

    config: FinetuneConfig
    module: FinetuneModule
    start: StartingPoint
    cache: GraphCache
    planned: PlannedSplit
    values: np.ndarray
    target_name: str
    parts: dict[str, CrystalGraphDataset]
    seconds: float
    epochs_run: int
    main: bool
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def model(self) -> PropertyModel:
        """The trained property model (its target carries the standardisation)."""
        return self.module.model


@dataclass
class PreparedRun:
    """A run set up to train, before any step: its (claimed) folder has ``config.yaml``, the
    seeds are set, the graph cache is built, the split planned and checked, and the property
    model freshly made (:func:`prepare_run`); every way of training starts here.

    :param values: ``(N,)`` the (transformed) targets the model learns, NaN where unusable.
    :param parts: train / val / test datasets (after the ``max_train`` / ``max_eval`` caps).
    """

    config: FinetuneConfig
    start: StartingPoint
    cache: GraphCache
    planned: PlannedSplit
    values: np.ndarray
    target_name: str
    parts: dict[str, CrystalGraphDataset]
    module: FinetuneModule
    notes: dict[str, Any] = field(default_factory=dict)

    def trained(
        self, seconds: float, epochs_run: int, main: bool = True, **notes: Any
    ) -> TrainedRun:
        """This run once its module holds the trained (best validation epoch's) weights.

        :param notes: more entries for the run's ``metrics.json``."""
        return TrainedRun(
            self.config,
            self.module,
            self.start,
            self.cache,
            self.planned,
            self.values,
            self.target_name,
            self.parts,
            seconds,
            epochs_run,
            main,
            {**self.notes, **notes},
        )


def prepare_run(config: FinetuneConfig) -> PreparedRun:
    """Set up the run of ``config`` in its (claimed) run folder: ``config.yaml``, the seeds
    (``config.seed``, drawn from in the same order by every way of training), the starting
    point, the graph cache, the split (invalid labels listed), the datasets and the model."""
    out = Path(config.out)
    write_config(out, config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = starting_point(config)
    (cache,) = prepare_caches(
        [config.data],
        start.settings,
        start.featurizer,
        config.cache_root,
        workers=config.featurize_workers,
        progress=config.progress and is_main_process(),
        log=main_print,
        cif_column=config.cif_column,
        id_key=config.id_key,
    )
    planned = plan_split(config, cache, check=False)
    (out / "invalid_targets.csv").unlink(missing_ok=True)  # not a stale list from an earlier run
    if len(planned.keep) < len(planned.raw):
        _report_invalid_targets(cache, planned.raw, planned.usable, config, out)
    _check_split(config, planned.split, len(planned.keep))
    split = cap_split(planned.split, config.split_seed_value, config.max_train, config.max_eval)
    values, target_name = _transformed_targets(config, planned)
    aux_values, aux_targets = _auxiliary_targets(config, cache, planned.keep[split.train])
    learned = values if aux_values is None else np.column_stack([values, aux_values])
    names = [target_name, *config.aux_targets]
    parts: dict[str, _TargetDataset] = {
        name: _TargetDataset(cache, planned.keep[positions], learned, names)
        for name, positions in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    module = _property_module(config, start, values[parts["train"].indices], aux_targets)
    if config.head_init == "source":
        head_from_source(module, start, parts["train"], values[parts["train"].indices])
    module.data_digest = _data_digest(cache, parts)
    evaluated = {name: np.asarray(cache.ids)[parts[name].indices] for name in ("val", "test")}
    notes = check_seen_by_start(config, start, evaluated) if is_main_process() else {}
    return PreparedRun(config, start, cache, planned, values, target_name, parts, module, notes)


@torch.no_grad()
def head_from_source(
    module: FinetuneModule,
    start: StartingPoint,
    train: _TargetDataset,
    y_train: np.ndarray,
    batch_size: int = 256,
) -> np.ndarray:
    """Start ``module``'s head from the starting model's: its hidden layer copied, its
    target output the least-squares combination ``a · o + c`` of the source's ``K`` outputs
    ``o`` (standardised, e.g. MP formation energy, band gap, Fermi energy) that best gives the
    standardised training targets. Returns ``[a_1 .. a_K, c]``.

    The encoder and the source head are evaluated once over the training crystals (eval mode:
    BatchNorm statistics untouched); outputs past the first (auxiliary targets) keep their
    fresh weights.

    :raises ValueError: the starting model has no property head, or one of another width.
    """
    source = start.head
    if source is None:
        raise ValueError(
            f"head_init source: {start.init} has no property head (a pre-trained encoder); "
            "give a fine-tuned model, or leave head_init new"
        )
    head = module.head
    if source[0].weight.shape != head[0].weight.shape:
        raise ValueError(
            f"head_init source: {start.init}'s head is {tuple(source[0].weight.shape)} wide, "
            f"this run's {tuple(head[0].weight.shape)} (leave --head-hidden at its default)"
        )
    encoder = module.encoder
    was_training = encoder.training
    encoder.eval()
    outputs = []
    for begin in range(0, len(train), batch_size):
        batch = train.__getitems__(np.arange(begin, min(begin + batch_size, len(train))))
        outputs.append(source(encoder(batch)).double())
    encoder.train(was_training)
    design = torch.cat([torch.cat(outputs), torch.ones(len(train), 1, dtype=torch.float64)], 1)
    target = module.model.standardise(torch.as_tensor(y_train, dtype=torch.float64))
    solution = torch.linalg.lstsq(design, target.unsqueeze(1), driver="gelsd").solution[:, 0]
    combine, offset = solution[:-1], solution[-1]
    head[0].load_state_dict(source[0].state_dict())
    weight, bias = source[2].weight.double(), source[2].bias.double()
    head[2].weight[0] = (combine @ weight).to(head[2].weight.dtype)
    head[2].bias[0] = (combine @ bias + offset).to(head[2].bias.dtype)
    return solution.numpy()


def _data_digest(cache: GraphCache, parts: dict[str, _TargetDataset]) -> str:
    """sha256 of each part's crystal ids and learned values (targets, auxiliary targets), in
    order."""
    digest = hashlib.sha256()
    ids = np.asarray(cache.ids)
    for name in ("train", "val", "test"):
        part = parts[name]
        digest.update(f"{name}:{len(part)}\n".encode())
        digest.update("\n".join(str(i) for i in ids[part.indices]).encode())
        learned = np.ascontiguousarray(part.values[part.indices], dtype=np.float64)
        digest.update(learned.tobytes())
    return digest.hexdigest()


def train_property_model(
    config: FinetuneConfig, callbacks: list[L.Callback] | None = None
) -> TrainedRun:
    """Train the property model of ``config`` in its (claimed) run folder: the graph cache,
    the split (:func:`prepare_run`), then fitting (resumed from ``last.ckpt`` if asked); ends
    with the best validation epoch's weights loaded."""
    run = prepare_run(config)
    out, module, parts = Path(config.out), run.module, run.parts
    trainer = _trainer(config, callbacks, len(parts["train"]))
    train_loader, val_loader = _loaders(config, parts["train"], parts["val"])
    fit(
        trainer,
        module,
        train_loader,
        val_loader,
        ckpt_path=resume_path(out, config.resume),
        weights_only=True,
    )
    best = out / "checkpoints" / "best.ckpt"
    if best.exists():
        module.load_state_dict(AtomicCheckpointIO().load_checkpoint(best)["state_dict"])
    return run.trained(
        training_seconds(trainer), int(trainer.current_epoch), bool(trainer.is_global_zero)
    )


def _transformed_targets(config: FinetuneConfig, planned: PlannedSplit) -> tuple[np.ndarray, str]:
    """``(N,)`` the targets in the units the model learns (NaN where unusable), and their name
    (``log10(G_VRH)`` for a ``log10`` run)."""
    forward = TRANSFORMS[config.target_transform][0]
    values = np.full_like(planned.raw, np.nan)
    values[planned.keep] = forward(planned.raw[planned.keep])
    return values, Target(config.target, config.unit, config.target_transform).name


def _auxiliary_targets(
    config: FinetuneConfig, cache: GraphCache, train_rows: np.ndarray
) -> tuple[np.ndarray | None, list[dict[str, Any]]]:
    """``(N, K)`` the auxiliary label columns standardised by the mean and std of their finite
    values on the training crystals (cache rows ``train_rows``; NaN where missing), and
    ``column``, ``mean``, ``std`` of each; ``None, []`` without ``aux_targets``."""
    columns = list(config.aux_targets)
    if not columns:
        return None, []
    missing = [c for c in columns if c not in cache.label_names]
    if missing:
        raise KeyError(
            f"{config.data}: no numeric label column {missing} (aux_targets); available: "
            f"{cache.label_names}"
        )
    raw = cache.labels(columns).astype(np.float64)
    standardised = np.full_like(raw, np.nan)
    stats = []
    for k, column in enumerate(columns):
        known = raw[train_rows, k]
        known = known[np.isfinite(known)]
        if not len(known):
            raise ValueError(f"{config.data}: no training crystal has a number in {column!r}")
        mean, std = float(known.mean()), float(known.std() or 1.0)
        finite = np.isfinite(raw[:, k])
        standardised[finite, k] = (raw[finite, k] - mean) / std
        stats.append({"column": column, "mean": mean, "std": std})
    return standardised, stats


def _property_module(
    config: FinetuneConfig,
    start: StartingPoint,
    y_train: np.ndarray,
    aux_targets: list[dict[str, Any]] | None = None,
) -> FinetuneModule:
    """Encoder + a new head, with the target standardised by the training targets' mean and
    std (regression), and one more output per auxiliary target."""
    target = Target(config.target, config.unit, config.target_transform, task=config.task)
    if config.task == "regression":
        target = dataclasses.replace(
            target, mean=float(y_train.mean()), std=float(y_train.std() or 1.0)
        )
    encoder = start.encoder
    aux_targets = list(aux_targets or [])
    outputs = target.out_dim + len(aux_targets)
    head = PropertyHead(encoder.out_dim, config.head_hidden or encoder.out_dim, outputs)
    return FinetuneModule(
        PropertyModel(encoder, head, target),
        config.lr,
        config.effective_encoder_lr_factor,
        config.weight_decay,
        config.freeze_encoder_epochs,
        config.warmup_epochs,
        config.lr_schedule,
        aux_targets,
        config.aux_weight,
        config.encoder_anchor,
    )


class _StaysStopped(EarlyStopping):
    """Early stopping whose decision survives a resume: a run that had stopped (its patience
    used up in the checkpoint) trains no further epoch when resumed, so its best epoch stays."""

    @property
    def state_key(self) -> str:
        """Lightning's key for ``EarlyStopping`` itself, so that checkpoints written with it
        (before this class) restore their patience count here too."""
        return f"EarlyStopping{dict(monitor=self.monitor, mode=self.mode)!r}"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.wait_count >= self.patience:
            trainer.should_stop = True


def _trainer(
    config: FinetuneConfig, callbacks: list[L.Callback] | None, train_size: int
) -> L.Trainer:
    callbacks = list(callbacks or [])
    if config.early_stopping:
        callbacks.append(
            _StaysStopped(monitor="val_mae", patience=config.early_stopping, mode="min")
        )
    return make_trainer(
        Path(config.out),
        epochs=config.epochs,
        monitor="val_mae",
        accelerator=config.accelerator,
        devices=config.devices,
        precision=config.precision,
        progress=config.progress,
        callbacks=callbacks,
        log_every_n_steps=max(1, min(20, math.ceil(train_size / config.batch_size))),
    )


def _loaders(
    config: FinetuneConfig,
    train: _TargetDataset,
    val: _TargetDataset,
) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled every epoch) and validation loaders; on a GPU run whose data fits,
    batches gathered on the GPU from arrays copied there once."""
    collate = GraphCollator(train.names)
    device = resident_device(config.accelerator, config.data_on_device, train.store)
    if device is not None:
        main_print(f"training data resident on {device}")
        train, val = train.to_device(device), val.to_device(device)
    workers = 0 if device is not None else config.loader_workers
    train_loader = DataLoader(
        train,
        batch_size=min(config.batch_size, len(train)),
        sampler=EpochSampler(len(train), shuffle=True, seed=config.seed, with_epoch=False),
        collate_fn=collate,
        num_workers=workers,
        drop_last=len(train) > config.batch_size,
    )
    val_loader = DataLoader(
        val,
        batch_size=config.batch_size,
        sampler=EpochSampler(len(val), shuffle=False, with_epoch=False),
        collate_fn=collate,
        num_workers=workers,
    )
    return train_loader, val_loader


def save_property_model(run: TrainedRun, metrics: dict[str, Any]) -> Path:
    """``RUN_DIR/model.pt`` (the mark of a finished run): the model, its target
    standardisation, transform and unit, how many crystals it was trained on and the hashes of
    the ids of those whose labels it used (training and validation:
    :mod:`crystaltwins.models.provenance`), and its test metrics (``metrics``: the run's
    ``metrics.json`` content)."""
    config = run.config
    ids = np.asarray(run.cache.ids)
    labelled = np.concatenate([run.parts["train"].indices, run.parts["val"].indices])
    info = {
        **run.model.target.to_info(),
        "init": run.start.init,
        "data_source": str(Path(config.data).resolve()),
        "crystals": metrics["crystals"],
        "test_metrics": metrics["test"],
        LABELLED_KEY: labelled_record(ids[labelled]),
    }
    if run.module.aux_targets:
        info[AUX_TARGETS_KEY] = run.module.aux_targets
    earlier = earlier_records(run.start.info)
    if earlier:
        info[EARLIER_KEY] = earlier
    path = run.out / "model.pt"
    bundle = ModelBundle(
        run.module.encoder,
        run.module.head,
        "finetuned",
        run.start.featurizer,
        run.start.settings,
        info,
    )
    save_model(path, bundle)
    return path


class _TargetDataset(CrystalGraphDataset):
    """A dataset whose graphs carry the values the model learns, by cache row: ``values``
    ``(N,)`` or ``(N, 1 + K)`` (the transformed target, then any standardised auxiliary
    targets), under ``names``."""

    def __init__(
        self, cache: Any, indices: np.ndarray, values: np.ndarray, names: list[str]
    ) -> None:
        super().__init__(cache, indices)
        self.values = values if values.ndim == 2 else values[:, None]
        self.names = names

    def __getitem__(self, i: int) -> Any:
        graph = super().__getitem__(i)
        row = self.values[self.indices[i]]
        graph.labels = {name: float(v) for name, v in zip(self.names, row, strict=True)}
        return graph

    def target_values(self) -> np.ndarray:
        return self.values
