"""Crystal Twins pre-training: two augmented views, an encoder, a projector, an SSL objective."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
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
from crystaltwins.data.splits import Split, random_split
from crystaltwins.graph.atom_features import AtomFeaturizer, featurizer_for
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.checkpoint import ModelBundle, load_model, save_model
from crystaltwins.models.heads import ProjectionHead, SimSiamPredictor
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
    resume_path,
    run_graph_settings,
    training_seconds,
    write_config,
)
from crystaltwins.training.configs import PretrainConfig, field_default
from crystaltwins.training.objectives import (
    ObjectiveTerm,
    as_terms,
    atom_embedding_width,
    build_objectives,
    make_heads,
    objective_losses,
    uses_atoms,
    uses_predictor,
    weighted_sum,
)
from crystaltwins.training.run_folder import claimed_folder_of
from crystaltwins.training.sampling import EpochSampler
from crystaltwins.transforms import GaussianNoise, build_augmentation, parse_augmentations


class PretrainModule(L.LightningModule):
    """Encoder + projector (+ predictor, + pretext heads) trained with self-supervised
    objectives on pairs of views. The module owns every parameter (objectives have none): with an
    objective that ``uses_predictor`` (SimSiam), its ``predictor`` head maps each view's
    projections to the predictions the objective compares, and is saved with the model; an
    atom-level objective (masked-element prediction, denoising) has its head in
    ``pretext_heads``, kept in the training checkpoints (a resumed run continues it) and left out
    of the model file (fine-tuning uses the encoder only).

    :param encoder: a registered encoder, ``batch → (B, H)``.
    :param projector: ``(B, H) → (B, D)``.
    :param objective: a parameter-free loss (:mod:`crystaltwins.losses`), or weighted terms
        (:func:`~crystaltwins.training.objectives.build_objectives`) summed into the loss.
    :param predictor: ``(B, D) → (B, D)``, required by an objective that ``uses_predictor``.
    :param pretext_heads: the atom-level objectives' heads, by objective name.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        objective: nn.Module | Sequence[ObjectiveTerm],
        lr: float = field_default(PretrainConfig, "lr"),
        weight_decay: float = field_default(PretrainConfig, "weight_decay"),
        predictor: nn.Module | None = None,
        pretext_heads: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.terms = as_terms(objective)
        heads = dict(pretext_heads or {})
        for term in self.terms:
            if uses_predictor(term) and predictor is None:
                raise ValueError(f"{type(term.objective).__name__} needs a predictor head")
            if uses_atoms(term) and term.name not in heads:
                raise ValueError(f"objective {term.name} needs its head in pretext_heads")
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor
        self.pretext_heads = nn.ModuleDict(heads)
        self.objectives = nn.ModuleDict({t.name: t.objective for t in self.terms})  # no weights
        self.lr = lr
        self.weight_decay = weight_decay
        #: sha256 of the crystals trained and validated on (:func:`data_digest`), kept in the
        #: checkpoints: a resumed run must train on the crystals it started with
        self.data_digest: str | None = None

    def forward(self, batch: Any) -> torch.Tensor:
        """Projections ``(B, D)``."""
        return self.projector(self.encoder(batch))

    def _step(self, pair: Any, stage: str) -> torch.Tensor:
        """The weighted loss of a pair of views, logged with each objective's own loss."""
        losses = objective_losses(
            self.terms, pair, self.encoder, self.projector, self.predictor, self.pretext_heads
        )
        loss = weighted_sum(self.terms, losses)
        logged = {f"{stage}_loss": loss}
        if len(losses) > 1:
            logged.update({f"{stage}_loss_{name}": value for name, value in losses.items()})
        for name, value in logged.items():
            self.log(
                name,
                value,
                prog_bar=name == f"{stage}_loss",
                on_step=stage == "train",
                on_epoch=True,
                batch_size=pair[0].num_crystals,
                sync_dist=True,  # SimSiam's loss is per rank; a no-op on one device
            )
        return loss

    def training_step(self, pair: Any, batch_idx: int) -> torch.Tensor:
        return self._step(pair, "train")

    def validation_step(self, pair: Any, batch_idx: int) -> None:
        self._step(pair, "val")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record_data_digest(checkpoint, self.data_digest)
        record_execution(checkpoint, self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed checkpoint must fit this model and its crystals (one line naming it
        otherwise); a note when it resumes on another number of devices."""
        check_resumed_state(self, checkpoint, self.trainer.ckpt_path)
        if (changed := execution_change(checkpoint, self.trainer)) is not None:
            main_print(changed)
        check_resumed_data(
            checkpoint,
            self.data_digest,
            self.trainer.ckpt_path,
            "other crystals in its training or validation set",
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


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

    listed = json.loads(Path(exclude_ids_file).read_text())
    # sources compared as resolved paths (a list written with relative paths names the same files)
    excluded = {(os.path.realpath(s), str(i)) for s, i in listed}
    keep, offset, dropped = [], 0, 0
    for cache in caches:
        source = os.path.realpath(cache.manifest["key"]["source"])
        ids = cache.ids
        mask = np.array([(source, str(i)) not in excluded for i in ids.tolist()], dtype=bool)
        keep.append(np.flatnonzero(mask) + offset)
        dropped += int((~mask).sum())
        offset += len(ids)
    note = f"excluded {dropped:,} of the {len(excluded):,} crystals listed in {exclude_ids_file}"
    if excluded and not dropped:  # a corpus without them, or a list naming other paths
        sources = sorted({s for s, _ in excluded})
        shown = ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else "")
        note += f" (none is in the pre-training data; the list names {shown})"
    main_print(note)
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def pretrain(config: PretrainConfig) -> Path:
    """Run pre-training; returns the path of the best model file (``RUN_DIR/model.pt``).

    The config (objective, augmentation and encoder names included) is checked, and a starting
    model (``init_from``) read, before any work."""
    config.validate()
    start = load_model(config.init_from) if config.init_from else None
    if start is not None:
        check_pretrained_encoder(config, start.encoder, config.init_from)
    with claimed_folder_of(config, is_main_process()):
        return _pretrain_in_claimed_folder(config, start)


def _graph_and_features(
    config: PretrainConfig, start: ModelBundle | None
) -> tuple[GraphSettings, AtomFeaturizer]:
    """The run's graph settings (with candidates for the perturbation) and element features:
    a starting model's own, else those asked for / of the first source."""
    chosen = parse_augmentations(config.augment)
    margin = max(GraphSettings().perturbation_margin, config.perturbation)
    if "gn" in chosen:
        noise = GaussianNoise.TRUNCATION * config.noise_sigma
        # RP then GN move an atom up to their sum
        margin = config.perturbation + noise if "rp" in chosen else max(margin, noise)
    settings = run_graph_settings(
        config, config.data[0], start.graph_settings if start else None, perturbation_margin=margin
    )
    if start is not None:
        return settings, start.featurizer
    return settings, featurizer_for(config.data[0], config.atom_init)


def _selected_crystals(config: PretrainConfig, caches: list[Any]) -> np.ndarray:
    """Positions in the concatenated caches to train and validate on: without excluded ids, a
    seeded random subset of ``max_crystals``."""
    positions = np.arange(sum(len(c) for c in caches))
    if config.exclude_ids_file:
        positions = _without_excluded(caches, config.exclude_ids_file)
    if config.max_crystals is not None and config.max_crystals < len(positions):
        positions = np.sort(
            np.random.default_rng(config.seed).choice(positions, config.max_crystals, replace=False)
        )
    return positions


def data_digest(caches: Sequence[Any], positions: np.ndarray, split: Split) -> str:
    """sha256 of the ids (with the index of their source) of the crystals a pre-training run
    trains and validates on, in order."""
    digest = hashlib.sha256()
    labelled = np.concatenate(
        [np.char.add(f"{k}:", np.asarray(c.ids).astype(str)) for k, c in enumerate(caches)]
    )
    for name, part in (("train", split.train), ("val", split.val)):
        chosen = labelled[positions[part]]
        digest.update(f"{name}:{len(chosen)}\n".encode())
        digest.update("\n".join(chosen.tolist()).encode())
    return digest.hexdigest()


def _train_val(config: PretrainConfig, count: int) -> Split:
    """The seeded training / validation split of ``count`` crystals (both at least 2)."""
    split = random_split(count, (1 - config.val_fraction, config.val_fraction, 0.0), config.seed)
    if len(split.val) < 2 or len(split.train) < 2:
        raise ValueError(
            f"{count} crystals are too few for a validation fraction of "
            f"{config.val_fraction:g} (validation {len(split.val)}, training {len(split.train)}: "
            "both need at least 2 crystals); use more data or a larger --val-fraction"
        )
    return split


def _pretrain_module(
    config: PretrainConfig,
    start: ModelBundle | None,
    featurizer: AtomFeaturizer,
    settings: GraphSettings,
    train: ConcatGraphViews,
) -> PretrainModule:
    """Encoder + projector (+ predictor) (a starting model's, or new ones) with the weighted
    objectives, and fresh heads for the atom-level ones (sized on a crystal of ``train``)."""
    predictor = None
    if start is not None:
        encoder = start.encoder
        # A pre-trained model's projector goes on training; a fine-tuned model's head predicts
        # its property (1-3 outputs), no projector: a new one is made, as from scratch.
        own = start.head if start.kind == "pretrained" else None
        projector = own or ProjectionHead(
            encoder.out_dim, config.projection_hidden, config.projection_dim
        )
        if own is not None and start.predictor is not None:  # our own SimSiam model
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
    terms = build_objectives(
        config.objective,
        config.objective_weights,
        lambda_=config.barlow_lambda,
        l2_normalize=config.barlow_l2_normalize,
    )
    if not any(map(uses_predictor, terms)):
        predictor = None
    elif predictor is None:
        predictor = SimSiamPredictor(projector.out_dim)
    heads = {}
    if any(map(uses_atoms, terms)):
        atom_dim = atom_embedding_width(encoder, train.__getitems__([0])[0].to_batch())
        heads = make_heads(terms, atom_dim, len(featurizer.table), settings.radius)
    return PretrainModule(
        encoder, projector, terms, config.lr, config.weight_decay, predictor, heads
    )


def _model_info(
    config: PretrainConfig,
    train: ConcatGraphViews,
    val: ConcatGraphViews,
    trainer: L.Trainer,
    module: PretrainModule,
) -> dict[str, Any]:
    """What the model file records about its training."""
    return {
        "objective": config.objective,
        "objective_weights": {t.name: t.weight for t in module.terms},
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


def _pretrain_in_claimed_folder(config: PretrainConfig, start: ModelBundle | None) -> Path:
    """:func:`pretrain`, once its run folder is locked and checked."""
    out = Path(config.out)
    write_config(out, config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    settings, featurizer = _graph_and_features(config, start)
    caches = prepare_caches(
        config.data,
        settings,
        featurizer,
        config.cache_root,
        workers=config.featurize_workers,
        progress=config.progress and is_main_process(),
        log=main_print,
        cif_column=config.cif_column,
        id_key=config.id_key,
    )
    positions = _selected_crystals(config, caches)
    split = _train_val(config, len(positions))
    augmentation = build_augmentation(
        config.augment,
        settings,
        config.perturbation,
        config.atom_mask_fraction,
        config.edge_mask_fraction,
        options={
            "gn": {"sigma": config.noise_sigma},
            "rp": {"min_distance": config.perturbation_min},
            "em": {"per": config.edge_mask_per},
        },
    )
    train = ConcatGraphViews(caches, positions[split.train])
    val = ConcatGraphViews(caches, positions[split.val])
    module = _pretrain_module(config, start, featurizer, settings, train)
    module.data_digest = data_digest(caches, positions, split)
    trainer = make_trainer(
        out,
        epochs=config.epochs,
        monitor="val_loss",
        accelerator=config.accelerator,
        devices=config.devices,
        precision=config.precision,
        progress=config.progress,
        # only atom-level objectives: the projector gets no gradient
        unused_parameters=all(map(uses_atoms, module.terms)),
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
        module.load_state_dict(AtomicCheckpointIO().load_checkpoint(best)["state_dict"])
    if trainer.is_global_zero:
        info = _model_info(config, train, val, trainer, module)
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
