"""The settings of a run, each default written once: :class:`RunOptions` (shared),
:class:`PretrainConfig` and :class:`FinetuneConfig`.

Every field carries its help text (``metadata["help"]``): the CLI's options are made from these
fields (:mod:`crystaltwins.cli.options`), so a setting reachable from Python is reachable from
the command line with the same default. ``validate()`` checks a whole config; the library calls it
before any work (no cache built, no folder claimed, for a config that cannot run).

This module is light (no torch): ``crystaltwins --help`` imports it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crystaltwins.graph.settings import (
    DEFAULT_PERTURBATION,
    DEFAULT_PERTURBATION_MIN,
    GraphSettings,
)

#: The published Crystal Twins fine-tuning code's learning-rate factor of the pre-trained
#: encoder (the head learns at ``lr``, the encoder at ``lr * 0.2``): the paper protocol.
PAPER_ENCODER_LR_FACTOR = 0.2
#: The default factor of a pre-trained encoder: its head's learning rate. Chosen on validation
#: MAE (docs/results/learning_curves, docs/results/transfer): better than the paper's 0.2 in 7 of
#: 8 comparisons (perovskites, HOIP, GVRH at 100-1,000 labels), e.g. perovskites at 1,000 labels
#: 0.1295 vs 0.1457 eV/cell; ``bench --preset paper`` keeps the paper's.
DEFAULT_ENCODER_LR_FACTOR = 1.0
#: The encoder's factor when there is nothing pre-trained to protect (training from scratch).
SCRATCH_ENCODER_LR_FACTOR = 1.0
#: Tasks a property model is trained for.
TASKS = ("regression", "classification")
#: How a fine-tuning run's property head starts (:func:`~crystaltwins.training.finetune.head_from_source`).
HEAD_INITS = ("new", "source")
#: Learning-rate schedules of fine-tuning (:meth:`FinetuneModule.configure_optimizers`).
LR_SCHEDULES = ("constant", "cosine")
#: Encoders whose members ``members_together`` stacks (:mod:`crystaltwins.training.members`);
#: others (an encoder registered by a user) run one by one.
TRAINED_TOGETHER = ("cgcnn", "ogcnn", "gin", "gatgnn")
#: Crystals per batch and device of ``predict`` / ``embed`` (no gradients: larger batches).
INFERENCE_BATCH = 256
INFERENCE_DEVICE = "cpu"
_GRAPH = GraphSettings()


def setting(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A config field with its help text; ``cli``: more for the CLI (``choices``, ``metavar``,
    ``default_text`` shown instead of the default, ``flag`` for another option name,
    ``cli=False`` for a field the CLI does not offer)."""
    metadata = {"help": help, **cli}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata)
    return field(default=default, metadata=metadata)


def same_setting(config_cls: type, name: str) -> Any:
    """A field of another config with the same default and help (e.g. bench's ``radius``)."""
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            return field(default=field_default(config_cls, name), metadata=f.metadata)
    raise KeyError(f"{config_cls.__name__} has no field {name!r}")


def field_default(config_cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config_cls`` (one place to read it)."""
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{config_cls.__name__} has no default for {name!r}")


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def _whole(config: Any, name: str, least: int, optional: bool = False) -> None:
    value = getattr(config, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value!r}")


def _fraction(config: Any, name: str, low_open: bool = False) -> None:
    value = getattr(config, name)
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        raise ValueError(
            f"{name} must be a fraction {'in (0, 1)' if low_open else 'in [0, 1)'}, got {value!r}"
        )


def _own_model_name(config: Any, name: str) -> None:
    """Record a shipped model by its own name (``default`` -> the model it names now), so that
    a run's settings keep meaning the same model when ``default`` moves."""
    from crystaltwins.models.pretrained import canonical_model_name

    value = getattr(config, name)
    if isinstance(value, str):
        setattr(config, name, canonical_model_name(value))


def _existing_file(name: str, path: str | None) -> None:
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{name}: no such file {path!r}")


#: Lightning accelerators a run may ask for (``cuda`` is ``gpu``).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_accelerator(name: str | None) -> None:
    """A clear error for an unknown accelerator, or a GPU request on a machine without one
    (before any work)."""
    if not name:
        return
    name = str(name).lower()
    if name not in ACCELERATORS and not name.startswith("cuda:"):
        raise ValueError(f"unknown accelerator {name!r}; choose from {', '.join(ACCELERATORS)}")
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"no CUDA GPU available (torch {torch.__version__}); use cpu or leave it to auto"
            )
    elif name == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ValueError("no Apple MPS device available; use cpu")


def inference_device(name: str) -> str:
    """The torch device of ``predict`` / ``embed``: ``auto`` is the CUDA GPU where there is one,
    else the CPU; another name must be a torch device that exists here.

    :raises ValueError: one line, before any work."""
    import torch

    name = str(name).lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {name!r}; give cpu, cuda, cuda:1, mps or auto") from None
    check_accelerator(name)
    return name


#: The encoder of a new model when none is named.
DEFAULT_ENCODER = "cgcnn"
#: The encoder sizes a run may set (each encoder takes those its constructor names).
ENCODER_SIZES = ("atom_fea_len", "n_conv", "h_fea_len")


def _check_encoder(name: str) -> None:
    """``ValueError`` unless ``name`` is a registered encoder."""
    from crystaltwins.models.registry import ENCODERS, lookup

    lookup(ENCODERS, "encoder", name)


@dataclass(kw_only=True)
class RunOptions:
    """Settings shared by pre-training and fine-tuning: graph, encoder size, element features,
    where caches live, and how the run executes (keyword-only)."""

    radius: float | None = setting(
        None,
        "neighbour cutoff in Å",
        default_text=f"a pre-trained model's or a graph cache's own, else {_GRAPH.radius:g}",
    )
    max_neighbors: int | None = setting(
        None,
        "neighbours kept per atom",
        default_text=f"a pre-trained model's or a graph cache's own, else {_GRAPH.max_neighbors}",
    )
    encoder: str | None = setting(
        None,
        "encoder of a new model: cgcnn, gin, gatgnn, ogcnn or another name registered in "
        "crystaltwins.models.registry.ENCODERS",
        default_text=f"a pre-trained model's own, else {DEFAULT_ENCODER}",
    )
    atom_fea_len: int | None = setting(
        None, "new encoder: atom embedding width", default_text="the encoder's own (CGCNN: 64)"
    )
    n_conv: int | None = setting(
        None, "new encoder: number of graph layers", default_text="the encoder's own (CGCNN: 3)"
    )
    h_fea_len: int | None = setting(
        None,
        "new encoder: crystal embedding width",
        default_text="the encoder's own (CGCNN: 128)",
    )
    atom_init: str | None = setting(
        None,
        "CGCNN atom_init.json defining the element features",
        default_text="a pre-trained model's own, else atom_init.json in a CGCNN folder, else built-in",
    )
    cache_root: str | None = setting(
        None, "where graph caches live", default_text="$CRYSTALTWINS_CACHE or ~/.cache/crystaltwins"
    )
    cif_column: str | None = setting(
        None, "CSV column holding the structures", default_text="the column named cif or structure"
    )
    id_key: str | None = setting(
        None,
        "extxyz / ASE database: the Atoms.info key holding each crystal's id",
        default_text="the first of id, material_id, mp_id, mpid, jid, name every frame has",
    )
    featurize_workers: int = setting(1, "processes building graph caches")
    loader_workers: int = setting(0, "data-loader worker processes")
    accelerator: str = setting("auto", "cpu, gpu or auto")
    devices: str = setting("auto", "number of devices (several GPUs: data-parallel)")
    precision: str | None = setting(
        None, "e.g. 32-true, 16-mixed, bf16-mixed", default_text="16-mixed on GPU, else 32-true"
    )
    resume: bool = setting(
        False, "continue the run in OUT from checkpoints/last.ckpt (same settings only)"
    )
    overwrite: bool = setting(
        False, "replace the earlier run in OUT (only crystaltwins' own files are removed)"
    )
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        """Check the shared settings (raises ValueError / FileNotFoundError, one line)."""
        self.graph_settings()  # radius > 0, max_neighbors >= 1
        for name in ENCODER_SIZES:
            if getattr(self, name) is not None:
                _whole(self, name, 1)
        _whole(self, "featurize_workers", 1)
        _whole(self, "loader_workers", 0)
        _existing_file("atom_init", self.atom_init)
        if self.resume and self.overwrite:
            raise ValueError("give resume or overwrite, not both")
        seed = getattr(self, "seed", 0)
        if (
            isinstance(seed, bool)
            or not isinstance(seed, numbers.Integral)
            or not 0 <= seed < 2**32
        ):
            raise ValueError(f"seed must be a whole number from 0 to 2**32 - 1, got {seed!r}")
        if hasattr(self, "seed"):
            self.seed = int(seed)  # numpy's integers too (for s in np.arange(5))
        if str(self.devices).strip() in ("0", ""):
            raise ValueError(
                f"devices must be 'auto', a number of devices >= 1, -1 (all) or a list such as "
                f"'0,1', got {self.devices!r}"
            )
        check_accelerator(self.accelerator)
        if self.encoder is not None:
            _check_encoder(self.encoder)

    @property
    def encoder_name(self) -> str:
        """The encoder of a new model (``encoder``, else :data:`DEFAULT_ENCODER`)."""
        return self.encoder or DEFAULT_ENCODER

    def encoder_sizes(self) -> dict[str, int]:
        """The encoder sizes asked for (the others are the encoder's own defaults)."""
        return {k: getattr(self, k) for k in ENCODER_SIZES if getattr(self, k) is not None}

    def encoder_conflicts(self, model_encoder: str) -> list[str]:
        """Encoder settings asked for that a pre-trained model (whose encoder is registered as
        ``model_encoder``) does not have: it brings its own encoder."""
        asked = [f"{k} {v}" for k, v in self.encoder_sizes().items()]
        if self.encoder is not None and self.encoder != model_encoder:
            asked.insert(0, f"encoder {self.encoder} (the model's: {model_encoder})")
        return asked

    def graph_settings(self, given: GraphSettings | None = None, **more: Any) -> GraphSettings:
        """The graph settings of this run: ``radius`` / ``max_neighbors`` where set, the rest
        from ``given`` (a pre-trained model's or a graph cache's settings), else the defaults.
        A radius set here also ends the Gaussian expansion there
        (:attr:`GraphSettings.gaussian_dmax`).

        :param more: other :class:`GraphSettings` fields (e.g. ``perturbation_margin``)."""
        base = dataclasses.asdict(given) if given is not None else {}
        asked = {
            k: v
            for k, v in (("radius", self.radius), ("max_neighbors", self.max_neighbors))
            if v is not None
        }
        if self.radius is not None:  # the expansion follows the radius asked for
            base.pop("gaussian_dmax", None)
        return GraphSettings(**{**base, **more, **asked})

    def graph_conflicts(self, model_settings: GraphSettings) -> list[str]:
        """``radius`` / ``max_neighbors`` asked for that differ from a pre-trained model's."""
        return [
            f"{name} {getattr(self, name):g} (the model's: {getattr(model_settings, name):g})"
            for name in ("radius", "max_neighbors")
            if getattr(self, name) is not None
            and getattr(self, name) != getattr(model_settings, name)
        ]


@dataclass
class PretrainConfig(RunOptions):
    """Settings of a pre-training run; the defaults are the paper's (Barlow Twins, Adam 1e-5,
    batch 64, 15 epochs, 95/5 split) and the published checkpoint's dimensions."""

    data: list[str] = setting(help="one or more data sources (labels are ignored)", cli=False)
    out: str = setting(help="run folder")
    objective: str = setting(
        "barlow_twins",
        "self-supervised objective: barlow_twins, simsiam, vicreg, nt_xent, masked_element, "
        "denoise (names in crystaltwins.losses.OBJECTIVES), or several summed: "
        "barlow_twins+denoise",
    )
    objective_weights: str | None = setting(
        None,
        "weights of the summed objectives: one per objective (1,0.5) or name:weight pairs "
        "(denoise:0.5)",
        default_text="1 each",
    )
    noise_sigma: float = setting(0.1, "Gaussian noise (gn): σ of each coordinate's move in Å")
    barlow_lambda: float = setting(0.0051, "Barlow Twins off-diagonal weight λ")
    barlow_l2_normalize: bool = setting(
        True,
        "L2-normalise each projection before the Barlow Twins loss (the Crystal Twins code "
        "does; the original Barlow Twins does not)",
    )
    augment: str = setting("rp,am,em", "comma-separated augmentations: rp, gn, am, em")
    perturbation: float = setting(
        DEFAULT_PERTURBATION, "random perturbation (rp): largest displacement in Å"
    )
    perturbation_min: float | None = setting(
        DEFAULT_PERTURBATION_MIN,
        "random perturbation (rp): smallest displacement in Å; each atom moves a length "
        "uniform in [this, --perturbation] (Crystal Twins: 0; equal to --perturbation: every "
        "atom moves exactly that, this package's earlier definition)",
    )
    atom_mask_fraction: float = setting(0.1, "atom masking (am): fraction of atoms masked")
    edge_mask_fraction: float = setting(
        0.1,
        "edge masking (em): fraction of each atom's edges masked (floor of it, as Crystal "
        "Twins keeps ceil(0.9 x 12) = 11 of 12)",
    )
    edge_mask_per: str = setting(
        "atom",
        "edge masking (em): count the masked edges per centre atom (Crystal Twins) or per crystal",
        choices=("atom", "crystal"),
    )
    lr: float = setting(1e-5, "learning rate (Adam)")
    weight_decay: float = setting(1e-6, "weight decay (Adam)")
    batch_size: int = setting(64, "crystals per batch")
    epochs: int = setting(15, "training epochs")
    val_fraction: float = setting(0.05, "fraction of the crystals held out for validation")
    seed: int = setting(0, "random seed (split, initialisation, augmentations)")
    projection_hidden: int = setting(128, "projector hidden width")
    projection_dim: int = setting(256, "projector output width")
    init_from: str | None = setting(
        None, "start from a model file or published .pth", default_text="a new encoder"
    )
    max_crystals: int | None = setting(
        None, "use a random subset of this many crystals", default_text="all"
    )
    exclude_ids_file: str | None = setting(
        None, "JSON list of [source file, id] pairs left out of pre-training", default_text="none"
    )

    def validate(self) -> None:
        """Check every setting before any work (one-line ValueError / FileNotFoundError); a
        shipped model's name in ``init_from`` becomes its own (``default`` -> ``mp-multi-33k``)."""
        if not self.data:
            raise ValueError("pretrain needs at least one data source")
        _own_model_name(self, "init_from")
        if not self.out:
            raise ValueError("pretrain needs a run folder (out)")
        super().validate()
        for name in ("epochs", "batch_size", "projection_hidden", "projection_dim"):
            _whole(self, name, 1)
        _whole(self, "max_crystals", 2, optional=True)
        _positive(self, "lr")
        if self.weight_decay < 0 or self.barlow_lambda < 0 or self.perturbation < 0:
            raise ValueError("weight_decay, barlow_lambda and perturbation must be >= 0")
        _fraction(self, "val_fraction", low_open=True)
        _fraction(self, "atom_mask_fraction")
        _fraction(self, "edge_mask_fraction")
        if (
            self.perturbation_min is not None
            and not 0 <= self.perturbation_min <= self.perturbation
        ):
            raise ValueError(
                f"perturbation_min must be in [0, perturbation ({self.perturbation:g})], got "
                f"{self.perturbation_min:g}"
            )
        if self.edge_mask_per not in ("atom", "crystal"):
            raise ValueError(f"edge_mask_per must be atom or crystal, got {self.edge_mask_per!r}")
        _positive(self, "noise_sigma")
        from crystaltwins.training.objectives import check_augmentations, parse_objectives
        from crystaltwins.transforms import parse_augmentations

        parse_objectives(self.objective, self.objective_weights)  # names and weights
        check_augmentations(self.objective, parse_augmentations(self.augment))
        _existing_file("exclude_ids_file", self.exclude_ids_file)


@dataclass
class FinetuneConfig(RunOptions):
    """Settings of a fine-tuning run; defaults follow the paper (Adam 1e-3, batch 128,
    200 epochs, 60/20/20 split, best validation MAE evaluated once on the test split).

    ``pretrained``: a model file from ``pretrain`` or ``finetune``, a published Crystal Twins
    ``.pth``, or a shipped model: ``"default"`` (the best start measured, ``"mp-multi-33k"``),
    ``"crystal-twins"`` (the Crystal Twins encoder), ``"mp-eform"`` (supervised transfer from
    MP formation energies), ``"mp-multi"`` (from MP formation energies, band gaps and Fermi
    energies at once) or ``"mp-multi-33k"`` (the same on 3x the crystals, the benchmark's MP
    test crystals among them).

    ``fold``: fold 0..4 of the matbench v0.1 protocol instead of a random split
    (:func:`~crystaltwins.data.splits.matbench_split`: test = the fold, validation = a quarter of
    the rest).

    ``ensemble``: how many models to train (seeds ``seed`` .. ``seed + ensemble - 1``, all on
    the split of ``split_seed``, by default ``seed``); see :mod:`crystaltwins.training.ensemble`.
    ``members_together``: train them in one process and loop (:mod:`crystaltwins.training.members`)."""

    data: str = setting(help="labelled data source", cli=False)
    target: str = setting(help="label column")
    out: str = setting(help="run folder")
    pretrained: str | None = setting(
        None,
        "our model.pt (or its run folder), a published Crystal Twins .pth, or a shipped model: "
        "'default' (the best start measured: mp-multi-33k), 'crystal-twins' (the Crystal Twins "
        "encoder), 'mp-eform' (MP formation-energy transfer), 'mp-multi' (MP formation energy + "
        "band gap + Fermi energy) or 'mp-multi-33k' (the same, 3x the MP crystals)",
        default_text="none: give this or --from-scratch",
    )
    from_scratch: bool = setting(False, "train a new encoder (the supervised baseline)")
    task: str = setting("regression", "what the head predicts", choices=TASKS)
    unit: str = setting("", "unit of the target (e.g. eV/atom), recorded with the results")
    target_transform: str = setting(
        "none", "transform of the target before training", choices=("none", "log10")
    )
    aux_targets: list[str] = setting(
        [],
        "more label columns learned alongside the target, by extra outputs of the head "
        "(multi-task training, regression; standardised by their training values; a crystal "
        "missing one is masked; only the target is evaluated and predicted)",
        metavar="COLUMN",
        default_text="none",
    )
    aux_weight: float = setting(
        1.0,
        "weight of the auxiliary targets' loss beside the target's (one mean squared error over "
        "all their known values, in standard units, so a column with more labels counts for more)",
    )
    lr: float = setting(1e-3, "learning rate of the head (Adam)")
    encoder_lr_factor: float = setting(
        DEFAULT_ENCODER_LR_FACTOR,
        "a pre-trained encoder learns at lr times this (chosen on validation MAE; the paper's "
        f"code used {PAPER_ENCODER_LR_FACTOR:g}; a new encoder learns at lr)",
    )
    weight_decay: float = setting(0.0, "weight decay (Adam)")
    batch_size: int = setting(128, "crystals per batch")
    epochs: int = setting(200, "training epochs (the best validation epoch is kept)")
    freeze_encoder_epochs: int = setting(
        0,
        "pre-trained encoder: keep it frozen (no updates, BatchNorm statistics fixed) for the "
        "first N epochs while the head learns, then train it at lr * encoder_lr_factor "
        "(linear probe, then fine-tune); N = epochs: a linear probe",
        metavar="N",
    )
    warmup_epochs: int = setting(
        0,
        "raise every learning rate linearly over the first N epochs, optimiser step by step: "
        "lr/S at the first of their S steps up to lr at the last (then constant, or the "
        "cosine decay of --lr-schedule)",
        metavar="N",
    )
    lr_schedule: str = setting(
        "constant",
        "learning rates over the epochs: constant (the paper's), or cosine: each decays from its "
        "value (after any warm-up) along half a cosine towards 0 at the end of the last epoch, "
        "optimiser step by step (a resume must keep the epochs and devices)",
        choices=LR_SCHEDULES,
    )
    encoder_anchor: float = setting(
        0.0,
        "pre-trained encoder: add encoder_anchor/2 times the squared distance of its weights from "
        "the pre-trained ones to the training loss (L2-SP, Li et al. 2018), so that fine-tuning "
        "keeps what pre-training learned; 0: off",
        metavar="ALPHA",
    )
    split: tuple[float, float, float] = setting(
        (0.6, 0.2, 0.2), "random split fractions", metavar=("TRAIN", "VAL", "TEST")
    )
    split_column: str | None = setting(
        None, "column holding train/val/test", default_text="a random split"
    )
    fold: int | None = setting(
        None,
        "fold 0-4 of the matbench v0.1 protocol (KFold(5, shuffle, random_state=18012019) over "
        "the crystals in file order; validation: a quarter of the training folds)",
        default_text="a random split",
    )
    split_files: tuple[str, str, str] | None = setting(
        None, "files of ids", metavar=("TRAIN", "VAL", "TEST"), default_text="a random split"
    )
    seed: int = setting(0, "random seed (split, initialisation, batch order)")
    split_seed: int | None = setting(
        None, "seed of the random split and of subsets", default_text="--seed"
    )
    max_train: int | None = setting(None, "cap on training crystals", default_text="all")
    max_eval: int | None = setting(
        None, "cap on validation and test crystals each", default_text="all"
    )
    early_stopping: int | None = setting(
        None, "patience in epochs on validation MAE", default_text="off"
    )
    head_hidden: int | None = setting(
        None, "hidden width of the head", default_text="the encoder's output width"
    )
    head_init: str = setting(
        "new",
        "the property head: new (random, as the paper), or source: a fine-tuned starting "
        "model's head, its hidden layer copied and its outputs (e.g. an MP band gap) combined "
        "into the target by a least-squares fit on the training crystals",
        choices=HEAD_INITS,
    )
    plots: bool = setting(True, "draw parity and learning-curve plots in OUT")
    data_on_device: str = setting(
        "auto",
        "GPU runs: keep the training data on the GPU when it takes at most half its free "
        "memory (auto), or stream batches from the cache (never)",
        choices=("auto", "never"),
    )
    ensemble: int = setting(
        1,
        "train K models (seeds SEED..SEED+K-1, one split) in OUT/members; predictions are "
        "their mean, with their std and each member's value",
        metavar="K",
    )
    members_together: bool = setting(
        False,
        "with --ensemble: train the members in one loop with stacked weights (faster on a GPU; "
        "every built-in encoder, no early stopping, no mid-run resume)",
    )

    @property
    def split_seed_value(self) -> int:
        """The seed of the random split (and of ``max_train`` / ``max_eval`` subsets)."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def effective_encoder_lr_factor(self) -> float:
        """``encoder_lr_factor`` for a pre-trained encoder, 1.0 for a new one."""
        return SCRATCH_ENCODER_LR_FACTOR if self.from_scratch else self.encoder_lr_factor

    def _check_aux_targets(self) -> None:
        """``aux_targets``: a list of distinct column names other than the target, for a
        regression trained one run at a time; ``aux_weight`` finite and >= 0."""
        from crystaltwins.models.property_model import MAX_AUX_TARGETS, RESERVED_AUX_NAMES

        if not (math.isfinite(self.aux_weight) and self.aux_weight >= 0):
            raise ValueError(f"aux_weight must be a finite number >= 0, got {self.aux_weight!r}")
        columns = self.aux_targets
        if not isinstance(columns, (list, tuple)) or not all(
            isinstance(c, str) and c for c in columns
        ):
            raise ValueError(f"aux_targets must be a list of column names, got {columns!r}")
        if not columns:
            return
        if len(columns) > MAX_AUX_TARGETS:
            raise ValueError(f"at most {MAX_AUX_TARGETS} aux_targets, got {len(columns)}")
        if self.task != "regression":
            raise ValueError("aux_targets need a regression task")
        if self.target in columns or len(set(columns)) < len(columns):
            raise ValueError(
                f"aux_targets {list(columns)} must be distinct and not the target {self.target!r}"
            )
        reserved = sorted(RESERVED_AUX_NAMES.intersection(columns))
        if reserved:
            raise ValueError(
                f"aux_targets cannot include {', '.join(reserved)} (predictions would be written "
                "as predicted_class, a classifier's column): rename that column"
            )
        if self.members_together:
            raise ValueError("members trained together take no aux_targets")

    def validate(self) -> None:
        """Check every setting before any work (one-line ValueError / FileNotFoundError); a
        shipped model's name in ``pretrained`` becomes its own (``default`` -> ``mp-multi-33k``)."""
        for name in ("data", "target", "out"):
            if not getattr(self, name):
                raise ValueError(f"finetune needs {name}")
        _own_model_name(self, "pretrained")
        if bool(self.pretrained) == bool(self.from_scratch):
            raise ValueError(
                "give exactly one of --pretrained MODEL and --from-scratch "
                "(pretrained=... or from_scratch=True in Python)"
            )
        super().validate()
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.target_transform not in ("none", "log10"):
            raise ValueError(
                f"target_transform must be 'none' or 'log10', got {self.target_transform!r}"
            )
        if isinstance(self.ensemble, int) and self.ensemble < 1:
            raise ValueError(f"ensemble must be a whole number >= 1, got {self.ensemble!r}")
        for name in ("epochs", "batch_size", "ensemble"):
            _whole(self, name, 1)
        for name in ("max_train", "max_eval", "early_stopping", "head_hidden"):
            _whole(self, name, 1, optional=True)
        _positive(self, "lr")
        if self.members_together and self.early_stopping:
            raise ValueError("members trained together run every epoch: no early stopping")
        for name in ("freeze_encoder_epochs", "warmup_epochs"):
            _whole(self, name, 0)
            if getattr(self, name) > self.epochs:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) is more than epochs ({self.epochs})"
                )
        if self.freeze_encoder_epochs and self.from_scratch:
            raise ValueError("freeze_encoder_epochs needs a pre-trained encoder, not from_scratch")
        if self.members_together and self.freeze_encoder_epochs:
            raise ValueError("members trained together take no freeze_encoder_epochs")
        if self.head_init not in HEAD_INITS:
            raise ValueError(
                f"head_init must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}"
            )
        if self.head_init == "source" and (self.from_scratch or self.task != "regression"):
            raise ValueError(
                "head_init source needs a fine-tuned starting model (--pretrained) and a "
                "regression task"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not (math.isfinite(self.encoder_anchor) and self.encoder_anchor >= 0):
            raise ValueError(
                f"encoder_anchor must be a finite number >= 0, got {self.encoder_anchor!r}"
            )
        if self.encoder_anchor and self.from_scratch:
            raise ValueError("encoder_anchor needs a pre-trained encoder, not from_scratch")
        if self.encoder_anchor and self.members_together:
            raise ValueError("members trained together take no encoder_anchor")
        alone = self.from_scratch and self.encoder_name not in TRAINED_TOGETHER
        if self.members_together and alone:
            raise ValueError(
                f"only {', '.join(TRAINED_TOGETHER)} encoders train together, not {self.encoder!r}"
            )
        if self.encoder_lr_factor < 0 or self.weight_decay < 0:
            raise ValueError("encoder_lr_factor and weight_decay must be >= 0")
        self._check_aux_targets()
        if self.data_on_device not in ("auto", "never"):
            raise ValueError(
                f"data_on_device must be 'auto' or 'never', got {self.data_on_device!r}"
            )
        ways = [
            name
            for name, value in (
                ("split_files", self.split_files),
                ("split_column", self.split_column),
                ("fold", self.fold),
            )
            if value is not None
        ]
        if len(ways) > 1:
            raise ValueError(f"give one way to split, not {' and '.join(ways)}")
        split = tuple(self.split)
        if len(split) != 3 or any(not f >= 0 for f in split):
            raise ValueError(f"split must be 3 fractions >= 0, got {list(split)}")
        if abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1, got {sum(split):g}")
        if self.fold is not None and self.fold not in range(5):
            raise ValueError(f"fold must be 0-4 (matbench v0.1), got {self.fold!r}")
        for name in self.split_files or ():
            if not Path(name).is_file():
                raise ValueError(f"--split-files: no such file {name!r}")


#: Settings a ``--config`` file does not set: they say how to run this time, and a run's own
#: ``config.yaml`` (which records them) may start another run.
FILE_IGNORED = frozenset({"resume", "overwrite", "working_dir"})


class SettingsFileError(ValueError):
    """A settings file's value that its setting cannot take (the CLI names the file)."""


def _file_value(name: str, value: Any, annotation: Any) -> Any:
    """A settings file's ``value`` as the type of setting ``name`` (its ``annotation``), as the
    command line's parser makes it: YAML reads ``1e-3`` as text and ``data: [a, b]`` as a list.
    :raises ValueError: one line naming the setting."""
    text = str(annotation).replace("typing.", "")
    optional = text.endswith("| None")
    kind = text.removesuffix("| None").strip()
    if value is None:
        if optional or kind.startswith(("list", "tuple")):
            return None
        raise ValueError(f"{name}: a value is needed (got an empty one)")

    def scalar(item: Any, want: str) -> Any:
        if want == "bool":
            if isinstance(item, bool):
                return item
            raise ValueError(f"{name} takes true or false, got {item!r}")
        if want in ("int", "float"):
            if isinstance(item, bool) or not isinstance(item, (int, float, str)):
                raise ValueError(f"{name} takes a number, got {item!r}")
            try:
                number = float(item)
            except ValueError:
                raise ValueError(f"{name} takes a number, got {item!r}") from None
            if want == "float":
                return number
            if not number.is_integer():
                raise ValueError(f"{name} takes a whole number, got {item!r}")
            return int(number)
        if want == "str":
            if isinstance(item, (list, tuple, dict)):
                raise ValueError(f"{name} takes one value, got {item!r}")
            return str(item)
        return item

    if kind.startswith(("list[", "tuple[")):
        inner = [t.strip() for t in kind[kind.index("[") + 1 : -1].split(",")]
        items = value
        if isinstance(value, str) and inner[0] in ("int", "float"):  # "0.8,0.1,0.1"
            items = [v for v in value.replace(",", " ").split() if v]
        elif not isinstance(value, (list, tuple)):
            items = [value]  # one path or name, spaces and commas included
        return [scalar(item, inner[0]) for item in items]
    return scalar(value, kind)


def config_from_settings(
    config_cls: type, file_settings: dict[str, Any] | None = None, **given: Any
) -> Any:
    """A config of ``config_cls`` from a settings file's mapping, then ``given`` (``None``
    values mean "not given"), checking names and required fields (one-line ValueError).

    In the file, ``no_<name>: true`` sets the flag ``--no-<name>`` (``<name>: false``), and
    :data:`FILE_IGNORED` settings are skipped."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    names = set(fields)
    values = {}
    file_settings = dict(file_settings or {})
    if {"resume", "overwrite"} <= set(file_settings):  # a run's own config.yaml: its "default"
        from crystaltwins.models.pretrained import recorded_model_name

        for key in ("pretrained", "init_from"):  # named the Crystal Twins encoder then
            if isinstance(file_settings.get(key), str):
                file_settings[key] = recorded_model_name(file_settings[key])
    for key, value in file_settings.items():
        if key in FILE_IGNORED:
            continue  # how to run, not what: a run's own config.yaml can start another run
        flag = key.removeprefix("no_")
        if key != flag and flag in fields and fields[flag].type in (bool, "bool"):
            if not isinstance(value, bool):
                raise SettingsFileError(f"{key} takes true or false, got {value!r}")
            values[flag] = not value  # no_progress: true, as the flag --no-progress
        elif value is not None:  # "unit:" with nothing after it: not given
            values[key] = value
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown settings {unknown}")
    for key in list(values):
        try:
            one_source = fields[key].type in ("str", str)
            if key == "data" and one_source and isinstance(values[key], (list, tuple)):
                if len(values[key]) != 1:
                    raise ValueError(f"data: one labelled data source, got {len(values[key])}")
                values[key] = values[key][0]
            values[key] = _file_value(key, values[key], fields[key].type)
        except ValueError as error:
            raise SettingsFileError(str(error)) from None
    values.update({k: v for k, v in given.items() if v is not None})
    required = [
        f.name
        for f in dataclasses.fields(config_cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if values.get(name) is None]
    if missing:
        flags = ", ".join(
            "the data" if name == "data" else "--" + name.replace("_", "-") for name in missing
        )
        raise ValueError(f"give {flags} (on the command line or in --config)")
    for name in ("split", "split_files"):
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    if (
        "data" in values
        and isinstance(values["data"], (str, os.PathLike))
        and names
        >= {
            "data",
            "init_from",
        }
    ):
        values["data"] = [str(values["data"])]
    return config_cls(**values)
