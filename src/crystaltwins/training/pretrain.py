"""Crystal Twins pre-training: two augmented views, an encoder, a projector, an SSL objective."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from crystaltwins.data.dataset import AugmentedPairCollator
from crystaltwins.data.gather import ConcatGraphViews
from crystaltwins.data.sources import prepare_caches
from crystaltwins.data.splits import random_split
from crystaltwins.graph.atom_features import AtomFeaturizer, default_featurizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.losses import build_objective, objective_class
from crystaltwins.models.checkpoint import ModelBundle, load_model, save_model
from crystaltwins.models.heads import ProjectionHead, SimSiamPredictor
from crystaltwins.models.registry import ENCODERS, lookup
from crystaltwins.training.common import (
    AtomicCheckpointIO,
    RunOptions,
    check_resumed_state,
    fit,
    is_main_process,
    main_print,
    make_trainer,
    new_encoder,
    resume_path,
    training_seconds,
    write_config,
)
from crystaltwins.training.run_folder import claimed_folder_of
from crystaltwins.training.sampling import EpochSampler
from crystaltwins.transforms import build_augmentation, parse_augmentations


@dataclass
class PretrainConfig(RunOptions):
    """Settings of a pre-training run; the defaults are the paper's (Barlow Twins, Adam 1e-5,
    batch 64, 15 epochs, 95/5 split) and the published checkpoint's dimensions."""

    data: list[str]
    out: str
    objective: str = "barlow_twins"
    barlow_lambda: float = 0.0051
    augment: str = "rp,am,em"
    perturbation: float = 0.05
    atom_mask_fraction: float = 0.1
    edge_mask_fraction: float = 0.1
    lr: float = 1e-5
    weight_decay: float = 1e-6
    batch_size: int = 64
    epochs: int = 15
    val_fraction: float = 0.05
    seed: int = 0
    projection_hidden: int = 128
    projection_dim: int = 256
    radius: float = 8.0
    max_neighbors: int = 12
    init_from: str | None = None
    max_crystals: int | None = None
    exclude_ids_file: str | None = None


class PretrainModule(L.LightningModule):
    """Encoder + projector (+ predictor) trained with a self-supervised objective on pairs of
    views. The module owns every parameter (the objective has none): with an objective that
    ``uses_predictor`` (SimSiam), its ``predictor`` head maps each view's projections to the
    predictions the objective compares, and is saved with the model.

    :param encoder: a registered encoder, ``batch → (B, H)``.
    :param projector: ``(B, H) → (B, D)``.
    :param objective: a parameter-free loss (:mod:`crystaltwins.losses`).
    :param predictor: ``(B, D) → (B, D)``, required by an objective that ``uses_predictor``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        objective: nn.Module,
        lr: float = 1e-5,
        weight_decay: float = 1e-6,
        predictor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if getattr(objective, "uses_predictor", False) and predictor is None:
            raise ValueError(f"{type(objective).__name__} needs a predictor head")
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor
        self.objective = objective
        self.lr = lr
        self.weight_decay = weight_decay

    def forward(self, batch: Any) -> torch.Tensor:
        """Projections ``(B, D)``."""
        return self.projector(self.encoder(batch))

    def _loss(self, pair: Any) -> torch.Tensor:
        view_a, view_b = pair
        z_a, z_b = self(view_a), self(view_b)
        if getattr(self.objective, "uses_predictor", False):
            return self.objective(z_a, z_b, self.predictor(z_a), self.predictor(z_b))  # type: ignore[misc]
        return self.objective(z_a, z_b)

    def training_step(self, pair: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(pair)
        self.log(
            "train_loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=pair[0].num_crystals,
            sync_dist=True,  # SimSiam's loss is per rank; a no-op on one device
        )
        return loss

    def validation_step(self, pair: Any, batch_idx: int) -> None:
        loss = self._loss(pair)
        self.log(
            "val_loss",
            loss,
            prog_bar=True,
            on_epoch=True,
            batch_size=pair[0].num_crystals,
            sync_dist=True,
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed checkpoint must fit this model (one line naming it otherwise)."""
        check_resumed_state(self, checkpoint, self.trainer.ckpt_path)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=True
        )


def _featurizer(config: PretrainConfig) -> AtomFeaturizer:
    if config.atom_init:
        return AtomFeaturizer.from_json(config.atom_init)
    if config.init_from:
        return load_model(config.init_from).featurizer
    first = Path(config.data[0])
    return default_featurizer(first if first.is_dir() else None)


def _loader(
    dataset: ConcatGraphViews, augmentation: Any, config: PretrainConfig, training: bool
) -> DataLoader:
    """Batches of two views; the views of a whole batch are made at once in the collate step
    (in the loader workers when ``loader_workers > 0``). Training: a new order and new views
    every epoch. Validation: one fixed shuffled order and fixed views, the same every epoch,
    batches mixed across the sources like the training batches (in the sources' order every
    batch would hold one file's crystals, and Barlow Twins statistics of such batches are not
    comparable to the training loss)."""
    size = len(dataset)
    return DataLoader(
        dataset,
        batch_size=min(config.batch_size, size),
        sampler=EpochSampler(
            size, shuffle=True, seed=config.seed, fixed_epoch=None if training else 0
        ),
        collate_fn=AugmentedPairCollator(augmentation, config.seed + (0 if training else 1)),
        num_workers=config.loader_workers,
        drop_last=training and size > config.batch_size,  # a batch of one has no batch statistics
        persistent_workers=False,
    )


def _without_excluded(caches: list[Any], exclude_ids_file: str) -> np.ndarray:
    """Positions in the concatenated caches whose (source file, id) is not in the JSON list."""
    import json

    excluded = {(s, i) for s, i in json.loads(Path(exclude_ids_file).read_text())}
    keep, offset = [], 0
    for cache in caches:
        source = cache.manifest["key"]["source"]
        ids = cache.ids
        mask = np.array([(source, str(i)) not in excluded for i in ids.tolist()], dtype=bool)
        keep.append(np.flatnonzero(mask) + offset)
        offset += len(ids)
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def pretrain(config: PretrainConfig) -> Path:
    """Run pre-training; returns the path of the best model file (``RUN_DIR/model.pt``)."""
    objective_class(config.objective)  # names checked before any work
    parse_augmentations(config.augment)
    lookup(ENCODERS, "encoder", config.encoder)
    with claimed_folder_of(config, is_main_process()):
        return _pretrain_in_claimed_folder(config)


def _pretrain_in_claimed_folder(config: PretrainConfig) -> Path:
    """:func:`pretrain`, once its run folder is locked and checked."""
    out = Path(config.out)
    write_config(out, config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    settings = GraphSettings(
        radius=config.radius,
        max_neighbors=config.max_neighbors,
        perturbation_margin=max(0.05, config.perturbation),
    )
    featurizer = _featurizer(config)
    caches = prepare_caches(
        config.data,
        settings,
        featurizer,
        config.cache_root,
        workers=config.featurize_workers,
        progress=config.progress and is_main_process(),
        log=main_print,
        cif_column=config.cif_column,
    )
    positions = np.arange(sum(len(c) for c in caches))
    if config.exclude_ids_file:
        positions = _without_excluded(caches, config.exclude_ids_file)
    if config.max_crystals is not None and config.max_crystals < len(positions):
        positions = np.sort(
            np.random.default_rng(config.seed).choice(positions, config.max_crystals, replace=False)
        )
    if config.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {config.epochs}")
    if not 0.0 < config.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    split = random_split(
        len(positions), (1 - config.val_fraction, config.val_fraction, 0.0), config.seed
    )
    if len(split.val) < 2 or len(split.train) < 2:
        raise ValueError(
            f"{len(positions)} crystals are too few for a validation fraction of "
            f"{config.val_fraction:g} (validation {len(split.val)}, training {len(split.train)}: "
            "both need at least 2 crystals); use more data or a larger --val-fraction"
        )
    augmentation = build_augmentation(
        config.augment,
        settings,
        config.perturbation,
        config.atom_mask_fraction,
        config.edge_mask_fraction,
    )
    train = ConcatGraphViews(caches, positions[split.train])
    val = ConcatGraphViews(caches, positions[split.val])

    predictor = None
    if config.init_from:
        start = load_model(config.init_from)
        encoder = start.encoder
        projector = start.head or ProjectionHead(
            encoder.out_dim, config.projection_hidden, config.projection_dim
        )
        if start.head is not None and start.predictor is not None:  # our own SimSiam model
            predictor = start.predictor
    else:
        encoder = new_encoder(
            featurizer,
            settings,
            config.atom_fea_len,
            config.n_conv,
            config.h_fea_len,
            name=config.encoder,
        )
        projector = ProjectionHead(encoder.out_dim, config.projection_hidden, config.projection_dim)
    objective = build_objective(config.objective, lambda_=config.barlow_lambda)
    if not getattr(objective, "uses_predictor", False):
        predictor = None
    elif predictor is None:
        predictor = SimSiamPredictor(projector.out_dim)
    module = PretrainModule(
        encoder, projector, objective, config.lr, config.weight_decay, predictor
    )

    trainer = make_trainer(
        out,
        epochs=config.epochs,
        monitor="val_loss",
        accelerator=config.accelerator,
        devices=config.devices,
        precision=config.precision,
        progress=config.progress,
    )
    fit(
        trainer,
        module,
        _loader(train, augmentation, config, training=True),
        _loader(val, augmentation, config, training=False),
        ckpt_path=resume_path(out, config.resume),
        weights_only=True,
    )
    best = out / "checkpoints" / "best.ckpt"
    if best.exists():
        state = AtomicCheckpointIO().load_checkpoint(best)["state_dict"]
        module.load_state_dict(state)
    info = {
        "objective": config.objective,
        "augmentations": config.augment,
        "data_sources": [str(Path(d).resolve()) for d in config.data],
        "crystals": {"train": len(train), "val": len(val)},
        "epochs": config.epochs,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "best_val_loss": float(trainer.checkpoint_callback.best_model_score or float("nan")),  # type: ignore[union-attr]
        "seconds": training_seconds(trainer),
    }
    if trainer.is_global_zero:
        save_model(
            out / "model.pt",
            ModelBundle(
                module.encoder,
                module.projector,
                "pretrained",
                featurizer,
                settings,
                info,
                predictor=module.predictor,
            ),
        )
    return out / "model.pt"
