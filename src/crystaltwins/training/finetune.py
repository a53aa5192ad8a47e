"""Fine-tuning a (pre-trained or fresh) CGCNN encoder with an MLP head on a labelled dataset.

``from_scratch=True`` is the supervised CGCNN baseline: same architecture and protocol,
random initialisation. ``ensemble=K`` trains K such models (:mod:`crystaltwins.training.ensemble`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass
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

from crystaltwins.data.batch import CrystalGraphBatch
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
from crystaltwins.evaluation.inference import batched_outputs
from crystaltwins.evaluation.metrics import (
    classification_metrics,
    metrics_json,
    regression_metrics,
)
from crystaltwins.graph.atom_features import AtomFeaturizer, default_featurizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.checkpoint import ModelBundle, load_model, resolve_model_path, save_model
from crystaltwins.models.heads import PropertyHead
from crystaltwins.models.property_model import PropertyModel, Target
from crystaltwins.models.registry import ENCODERS, lookup
from crystaltwins.models.targets import TRANSFORMS, check_transform
from crystaltwins.training.common import (
    AtomicCheckpointIO,
    RunOptions,
    check_resumed_state,
    fit,
    is_main_process,
    main_print,
    make_trainer,
    new_encoder,
    resident_device,
    resume_path,
    training_seconds,
    write_config,
)
from crystaltwins.training.epoch_metrics import EpochMeans
from crystaltwins.training.run_folder import claimed_folder_of
from crystaltwins.training.sampling import EpochSampler


@dataclass
class FinetuneConfig(RunOptions):
    """Settings of a fine-tuning run; defaults follow the paper (Adam 1e-3, batch 128,
    200 epochs, 60/20/20 split, best validation MAE evaluated once on the test split).

    ``pretrained``: a model file from ``pretrain``, a published Crystal Twins ``.pth``, or
    ``"default"`` for the encoder shipped with the package.

    ``fold``: fold 0..4 of the matbench v0.1 protocol instead of a random split
    (:func:`~crystaltwins.data.splits.matbench_split`: test = the fold, validation = a quarter of
    the rest).

    ``ensemble``: how many models to train (seeds ``seed`` .. ``seed + ensemble - 1``, all on
    the split of ``split_seed``, by default ``seed``); see :mod:`crystaltwins.training.ensemble`.
    ``members_together``: train them in one process and loop (:mod:`crystaltwins.training.members`)."""

    data: str
    target: str
    out: str
    pretrained: str | None = None
    from_scratch: bool = False
    task: str = "regression"
    unit: str = ""
    target_transform: str = "none"
    lr: float = 1e-3
    encoder_lr_factor: float = 0.2
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 200
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_column: str | None = None
    fold: int | None = None
    split_files: tuple[str, str, str] | None = None
    seed: int = 0
    split_seed: int | None = None
    max_train: int | None = None
    max_eval: int | None = None
    early_stopping: int | None = None
    head_hidden: int | None = None
    plots: bool = True
    data_on_device: str = "auto"
    ensemble: int = 1
    members_together: bool = False


def split_seed(config: FinetuneConfig) -> int:
    """The seed of the random split (and of ``max_train`` / ``max_eval`` subsets)."""
    return config.seed if config.split_seed is None else config.split_seed


class FinetuneModule(L.LightningModule):
    """Trains a :class:`~crystaltwins.models.property_model.PropertyModel`: regression on
    standardised (transformed) targets (MSE), or binary classification (cross-entropy on 2
    logits).

    The model's encoder and head are this module's ``encoder`` and ``head`` (the names of the
    checkpoints' weights); :attr:`model` is the property model itself, whose conversions give the
    metrics' and the user's units.
    """

    def __init__(
        self,
        model: PropertyModel,
        lr: float = 1e-3,
        encoder_lr_factor: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.head = model.head
        self.__dict__["model"] = model  # the same modules, not registered twice
        self.task = model.target.task
        self.lr = lr
        self.encoder_lr_factor = encoder_lr_factor
        self.weight_decay = weight_decay

    model: PropertyModel

    def forward(self, batch: CrystalGraphBatch) -> torch.Tensor:
        """Predictions ``(num_crystals,)`` in the target's own units (any target transform
        undone, e.g. GPa for a ``log10`` run on G_VRH), or P(class 1) for classification."""
        return self.model.in_target_units(self.model(batch))

    def _step(self, batch: CrystalGraphBatch, stage: str) -> torch.Tensor:
        target = batch.targets[:, 0]
        out = self.model(batch)
        if self.task == "classification":
            loss = F.cross_entropy(out, target.long())
            error_rate = (out.argmax(-1) != target.long()).float().mean()
            # Checkpoints monitor val_mae: for classification, the error rate.
            values = (loss, error_rate, 1 - error_rate)
        else:
            loss = F.mse_loss(out[:, 0], self.model.standardise(target))
            mae = (self.model.transformed(out) - target).abs().mean()
            values = (loss, mae)
        self.epoch_metrics.add(stage, batch.num_crystals, values)
        return loss

    @cached_property
    def epoch_metrics(self) -> EpochMeans:
        names = ["loss", "mae"] + (["accuracy"] if self.task == "classification" else [])
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
        """A resumed checkpoint must fit this model (one line naming it otherwise)."""
        check_resumed_state(self, checkpoint, self.trainer.ckpt_path)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [
            {"params": self.encoder.parameters(), "lr": self.lr * self.encoder_lr_factor},
            {"params": self.head.parameters(), "lr": self.lr},
        ]
        return torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay, foreach=True)


def predict_dataset(
    model: PropertyModel,
    dataset: CrystalGraphDataset,
    batch_size: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """Raw head outputs ``(N, out_dim)`` for every crystal of ``dataset``, in order (eval mode);
    ``model.transformed`` / ``model.in_target_units`` convert them."""
    return batched_outputs(model, [model], dataset, batch_size, device)


def predict_embeddings(
    encoder: nn.Module, dataset: CrystalGraphDataset, batch_size: int = 256
) -> np.ndarray:
    """Crystal embeddings ``(N, H)`` of ``dataset`` in order (eval mode, CPU)."""
    return batched_outputs(encoder, [encoder], dataset, batch_size)


def _split(config: FinetuneConfig, dataset: CrystalGraphDataset, keep: np.ndarray) -> Split:
    """Positions (into ``keep``) of train/val/test."""
    if config.split_files:
        ids = dataset.cache.ids[keep]
        return split_from_files(ids, *config.split_files)
    if config.split_column:
        return split_from_labels(
            dataset.cache.metadata(config.split_column)[keep], f"column {config.split_column!r}"
        )
    if config.fold is not None:
        return matbench_split(len(keep), config.fold, seed=split_seed(config))
    return random_split(len(keep), config.split, split_seed(config))


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


def _featurizer_and_encoder(
    config: FinetuneConfig,
) -> tuple[AtomFeaturizer, nn.Module, GraphSettings, str]:
    """The element features, encoder and graph settings to start from, and where they came from."""
    if config.pretrained and not config.from_scratch:
        path = resolve_model_path(config.pretrained)  # "default": the shipped model
        bundle = load_model(path, atom_init=config.atom_init)
        if config.atom_init and not bundle.info.get("published"):
            main_print(f"note: --atom-init ignored: {path} carries its own element features")
        return bundle.featurizer, bundle.encoder, bundle.graph_settings, str(path)
    if config.atom_init:
        featurizer = AtomFeaturizer.from_json(config.atom_init)
    else:
        path = Path(config.data)
        featurizer = default_featurizer(path if path.is_dir() else None)
    settings = GraphSettings()
    encoder = new_encoder(
        featurizer,
        settings,
        config.atom_fea_len,
        config.n_conv,
        config.h_fea_len,
        name=config.encoder,
    )
    return featurizer, encoder, settings, "scratch"


def _report_invalid_targets(
    cache: GraphCache, raw: np.ndarray, usable: np.ndarray, config: FinetuneConfig, out: Path
) -> None:
    """Say which crystals have no usable label; list them in ``RUN_DIR/invalid_targets.csv``."""
    if not is_main_process():
        return
    bad = np.flatnonzero(~usable)
    ids = cache.ids
    need = "a finite value > 0 (log10)" if config.target_transform == "log10" else "a number"
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "invalid_targets.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", config.target])
        writer.writerows((ids[k], raw[k]) for k in bad)
    shown = ", ".join(str(ids[k]) for k in bad[:5]) + (", ..." if len(bad) > 5 else "")
    main_print(
        f"{config.data}: {len(bad)} crystals without {need} in {config.target!r} are left out "
        f"({shown}); list: {listing}"
    )


def finetune(config: FinetuneConfig, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Run fine-tuning; returns the metrics written to ``RUN_DIR/metrics.json``.

    :param callbacks: extra Lightning callbacks (e.g. a progress display).
    """
    if not config.from_scratch and not config.pretrained:
        raise ValueError("give a pre-trained model (pretrained=...) or from_scratch=True")
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    check_transform(config.target_transform)
    lookup(ENCODERS, "encoder", config.encoder)
    if type(config.ensemble) is not int or config.ensemble < 1:
        raise ValueError(f"ensemble must be a whole number >= 1, got {config.ensemble!r}")
    with claimed_folder_of(config, is_main_process()):
        if config.ensemble > 1:
            from crystaltwins.training.ensemble import finetune_ensemble

            return finetune_ensemble(config, callbacks)
        return _finetune_in_claimed_folder(config, callbacks)


#: What an ensemble member writes besides a run's files: its predictions of every split.
MEMBER_PREDICTIONS = "member_predictions.npz"


def _finetune_in_claimed_folder(
    config: FinetuneConfig, callbacks: list[L.Callback] | None, member: bool = False
) -> dict[str, Any]:
    """:func:`finetune`, once its run folder is locked and checked.

    :param member: an ensemble's member: also write :data:`MEMBER_PREDICTIONS` (before
        ``model.pt``, the mark of a finished run).
    """
    out = Path(config.out)
    write_config(out, config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    featurizer, encoder, settings, init = _featurizer_and_encoder(config)
    (cache,) = prepare_caches(
        [config.data],
        settings,
        featurizer,
        config.cache_root,
        workers=config.featurize_workers,
        progress=config.progress and is_main_process(),
        log=main_print,
        cif_column=config.cif_column,
    )
    full = CrystalGraphDataset(cache)
    if config.target not in cache.label_names:
        raise KeyError(
            f"{config.data}: no numeric label column {config.target!r}; available: {cache.label_names}"
        )
    raw = cache.labels([config.target])[:, 0]
    forward, _, valid = TRANSFORMS[config.target_transform]
    usable = valid(raw)
    keep = np.flatnonzero(usable)
    dropped = len(raw) - len(keep)
    (out / "invalid_targets.csv").unlink(missing_ok=True)  # not a stale list from an earlier run
    if dropped:
        _report_invalid_targets(cache, raw, usable, config, out)
    split = _split(config, full, keep)
    _check_split(config, split, len(keep))
    split = cap_split(split, split_seed(config), config.max_train, config.max_eval)
    train_pos = split.train
    values = np.full_like(raw, np.nan)
    values[keep] = forward(raw[keep])
    target = Target(config.target, config.unit, config.target_transform, task=config.task)
    target_name = target.name

    # Datasets whose "labels" carry the transformed target under its own name.
    def subset(positions: np.ndarray) -> CrystalGraphDataset:
        return _TargetDataset(cache, keep[positions], values, target_name)

    train, val, test = subset(train_pos), subset(split.val), subset(split.test)
    y_train = values[keep[train_pos]]
    if config.task == "regression":  # standardised with the training split's statistics
        target = dataclasses.replace(
            target, mean=float(y_train.mean()), std=float(y_train.std() or 1.0)
        )
    head = PropertyHead(encoder.out_dim, config.head_hidden or encoder.out_dim, target.out_dim)
    model = PropertyModel(encoder, head, target)
    module = FinetuneModule(
        model,
        config.lr,
        config.encoder_lr_factor if init != "scratch" else 1.0,
        config.weight_decay,
    )
    callbacks = list(callbacks or [])
    if config.early_stopping:
        callbacks.append(
            EarlyStopping(monitor="val_mae", patience=config.early_stopping, mode="min")
        )
    trainer = make_trainer(
        out,
        epochs=config.epochs,
        monitor="val_mae",
        accelerator=config.accelerator,
        devices=config.devices,
        precision=config.precision,
        progress=config.progress,
        callbacks=callbacks,
        log_every_n_steps=max(1, min(20, math.ceil(len(train) / config.batch_size))),
    )
    collate = GraphCollator([target_name])
    device = resident_device(config.accelerator, config.data_on_device, train.store)
    if device is not None:  # batches gathered on the GPU from arrays copied there once
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
    fit(
        trainer,
        module,
        train_loader,
        val_loader,
        ckpt_path=resume_path(out, config.resume),
        weights_only=True,
    )
    seconds = training_seconds(trainer)
    best = out / "checkpoints" / "best.ckpt"
    if best.exists():
        module.load_state_dict(AtomicCheckpointIO().load_checkpoint(best)["state_dict"])
    if not trainer.is_global_zero:
        return {}

    metrics: dict[str, Any] = {
        "target": target_name,
        "unit": config.unit,
        "task": config.task,
        "init": init,
        "crystals": {
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "dropped_invalid_target": int(dropped),
        },
        "epochs_run": int(trainer.current_epoch),
        "best_epoch": _best_epoch(out),
        "seconds": seconds,
    }
    predictions: dict[str, np.ndarray] = {}
    head_outputs: dict[str, np.ndarray] = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        head_outputs[name] = predict_dataset(model, part)
        truth = values[part.indices]
        pred = predictions[name] = model.transformed(head_outputs[name])
        score = classification_metrics if config.task == "classification" else regression_metrics
        metrics[name] = score(truth, pred)
    metrics["mean_predictor_test_mae"] = float(
        np.mean(np.abs(values[test.indices] - y_train.mean()))
    )
    transformed = None  # the test file's values in the units of the metrics, when they differ
    if config.task == "regression" and config.target_transform != "none":
        transformed = (config.target_transform, values[test.indices], predictions["test"])
    _write_predictions(
        out / "test_predictions.csv",
        cache.ids[test.indices],
        raw[test.indices],
        model.in_target_units(head_outputs["test"]),
        config.task,
        transformed,
    )
    (out / "metrics.json").write_text(metrics_json(metrics))
    if member:
        _write_member_predictions(
            out / MEMBER_PREDICTIONS,
            cache.ids,
            raw,
            values,
            model,
            head_outputs,
            {"train": train, "val": val, "test": test},
        )
    info = {
        **target.to_info(),
        "init": init,
        "data_source": str(Path(config.data).resolve()),
        "test_metrics": metrics["test"],
    }
    save_model(
        out / "model.pt",
        ModelBundle(module.encoder, module.head, "finetuned", featurizer, settings, info),
    )
    if config.plots:
        from crystaltwins.evaluation.plots import learning_curves, parity_plot

        if config.task == "regression":
            parity_plot(values[test.indices], predictions["test"], out / "parity.png", target_name)
        learning_curves(out / "history.csv", out / "learning_curves.png")
    return metrics


class _TargetDataset(CrystalGraphDataset):
    """A dataset whose graphs carry one (transformed) target value under ``name``."""

    def __init__(self, cache: Any, indices: np.ndarray, values: np.ndarray, name: str) -> None:
        super().__init__(cache, indices)
        self.values = values
        self.name = name

    def __getitem__(self, i: int) -> Any:
        graph = super().__getitem__(i)
        graph.labels = {self.name: float(self.values[self.indices[i]])}
        return graph

    def target_values(self) -> np.ndarray:
        return self.values


def _write_member_predictions(
    path: Path,
    ids: np.ndarray,
    raw: np.ndarray,
    values: np.ndarray,
    model: PropertyModel,
    head_outputs: dict[str, np.ndarray],
    parts: dict[str, CrystalGraphDataset],
) -> None:
    """For each split ``S``: ``S_ids``, ``S_target`` (own units), ``S_truth`` (the metrics'
    units: transformed target, or class) and ``S_prediction`` (own units, or P(class 1))."""
    arrays: dict[str, np.ndarray] = {}
    for name, part in parts.items():
        prediction = model.in_target_units(head_outputs[name])
        arrays[f"{name}_ids"] = np.asarray(ids[part.indices]).astype(str)
        arrays[f"{name}_target"] = raw[part.indices]
        arrays[f"{name}_truth"] = values[part.indices]
        arrays[f"{name}_prediction"] = prediction
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _best_epoch(out: Path) -> int | None:
    path = out / "history.csv"
    if not path.exists():
        return None
    rows = [r for r in csv.DictReader(path.open()) if r.get("val_mae")]
    return int(min(rows, key=lambda r: float(r["val_mae"]))["epoch"]) if rows else None


def _write_predictions(
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
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
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
    tmp.replace(path)
