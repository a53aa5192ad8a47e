"""``crystaltwins bench``: pre-train once, then fine-tune CT and train CGCNN from scratch on every
task and seed; write ``results.json`` / ``results.md``; optionally the augmentation ablation
(paper Fig. 2) and the t-SNE maps (paper Fig. 3). Finished (task, seed, method) runs are reused.

Several encoders (``encoders``): each is trained from scratch on the same splits; CT is
pre-trained and fine-tuned for the first of them (or the one a given ``pretrained`` model holds),
or for every one with ``pretrain_all``. Run folders ``OUT/runs/TASK/seedK/METHOD`` and
``OUT/pretrain/VARIANT`` keep the names they had before encoders could be chosen for the default
encoder (``scratch``, ``ct``, ``ct_rp``, ``pretrain/rp_am_em``); another encoder's carry its name
as a suffix (``scratch_gin``, ``ct_gin``, ``ct_rp_gin``, ``pretrain/rp_am_em_gin``): see
:func:`run_method` and :func:`pretrain_name`, so existing benchmark folders resume.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from crystaltwins.evaluation.metrics import metrics_json
from crystaltwins.evaluation.tasks import PAPER_TASKS, TASKS, BenchmarkTask
from crystaltwins.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from crystaltwins.training.configs import (
    DEFAULT_ENCODER,
    PAPER_ENCODER_LR_FACTOR,
    TRAINED_TOGETHER,
    FinetuneConfig,
    PretrainConfig,
    RunOptions,
    field_default,
    same_setting,
    setting,
)
from crystaltwins.training.run_folder import (
    EXCLUDED_IDS_FILE,
    LOCK_NAME,
    RESUMABLE_CHANGES,
    claim_run_folder,
    config_differences,
)

#: The augmentation variant of the CT column (the paper's RP+AM+EM).
CT_VARIANT = "RP+AM+EM"
#: The encoder of the paper's Crystal Twins (its "paper CT" numbers).
PAPER_CT_ENCODER = "cgcnn"

#: What ``bench`` writes in its results folder (the runs themselves are in runs/ and pretrain/).
BENCH_FILES = frozenset(
    {
        "runs",
        "pretrain",
        "results.json",
        "results.md",
        "ablation.png",
        "tsne_perovskites.png",
        "data",  # the smoke preset's subsets of the data files
        LOCK_NAME,
    }
)


@dataclass(frozen=True)
class Preset:
    """What a benchmark run does; ``paper`` is the paper's protocol, ``cpu`` fits ~2 h on 2 cores."""

    name: str
    pretrain_epochs: int = field_default(PretrainConfig, "epochs")
    pretrain_lr: float = field_default(PretrainConfig, "lr")
    pretrain_batch: int = field_default(PretrainConfig, "batch_size")
    pretrain_max_crystals: int | None = field_default(PretrainConfig, "max_crystals")
    finetune_epochs: int = field_default(FinetuneConfig, "epochs")
    finetune_lr: float = field_default(FinetuneConfig, "lr")
    finetune_batch: int = field_default(FinetuneConfig, "batch_size")
    encoder_lr_factor: float = field_default(FinetuneConfig, "encoder_lr_factor")
    max_train: int | None = field_default(FinetuneConfig, "max_train")
    max_eval: int | None = field_default(FinetuneConfig, "max_eval")
    description: str = ""
    #: use only the first this many rows of each task file (and a share of
    #: ``pretrain_max_crystals`` of each other corpus file), copied to ``OUT/data``: only
    #: what the runs use gets a graph cache
    subset_rows: int | None = None
    #: the results only show that the pipeline runs (said in the report's title)
    pipeline_check: bool = False
    summary: str = ""


PRESETS = {
    "paper": Preset(
        "paper",
        encoder_lr_factor=PAPER_ENCODER_LR_FACTOR,
        description="the paper's protocol: 15 pre-training epochs (Adam 1e-5, batch 64), "
        "200 fine-tuning epochs (Adam 1e-3, batch 128), 60/20/20 splits, all crystals",
        summary="the paper's protocol (all crystals, 15 + 200 epochs; GPU-sized)",
    ),
    "cpu": Preset(
        "cpu",
        pretrain_epochs=4,
        pretrain_lr=1e-4,
        pretrain_max_crystals=12_000,
        finetune_epochs=40,
        max_train=1_000,
        max_eval=1_000,
        description="2-core CPU budget: pre-training on a random 12,000-crystal subset of the corpus for 4 epochs "
        "at lr 1e-4 (10x the paper's, to move the weights in so few steps); fine-tuning 40 epochs on at most "
        "1,000 training crystals per task, validation and test capped at 1,000 each; the pre-trained encoder "
        "is fine-tuned at the head's learning rate (factor 1.0, not the published code's 0.2: with 40 epochs "
        "the 0.2 factor left CT under-trained, chosen on perovskites seed-0 validation MAE, see "
        "docs/results/cpu/README.md); CT and scratch get exactly the same splits, epochs, head, optimiser and data",
        summary="~2 h on 2 CPU cores (12k crystals x 4 pre-training epochs, 40 fine-tuning epochs "
        "on <= 1,000 crystals, encoder lr factor 1.0)",
    ),
    "smoke": Preset(
        "smoke",
        pretrain_epochs=1,
        pretrain_lr=1e-4,
        pretrain_max_crystals=300,
        finetune_epochs=2,
        max_train=150,
        max_eval=100,
        subset_rows=500,
        pipeline_check=True,
        description="a few minutes: checks the pipeline end to end on the first 500 rows of "
        "each task file (60/20/20: 150 training crystals after the cap, 100 validation, 100 test) "
        "and 300 pre-training crystals; its numbers mean nothing",
        summary="a few minutes: a pipeline check whose numbers mean nothing",
    ),
}

ABLATION = {"RP": "rp", "AM+EM": "am,em", "RP+AM+EM": "rp,am,em"}


def _preset_help() -> str:
    return "what to run: " + "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())


@dataclass
class BenchConfig:
    """Settings of ``crystaltwins bench`` (:func:`run_bench`)."""

    out: str = setting(help="results folder")
    data_root: str | None = setting(
        None, "folder of the benchmark files", default_text="$CRYSTALTWINS_DATA"
    )
    tasks: list[str] = setting(
        list(PAPER_TASKS), f"tasks to run; known: {' '.join(TASKS)}", metavar="TASK"
    )
    seeds: int = setting(3, "seeds per task and method")
    first_seed: int = setting(0, "seeds are FIRST_SEED .. FIRST_SEED + SEEDS - 1")
    preset: str = setting("cpu", _preset_help(), choices=tuple(sorted(PRESETS)))
    protocol: str = setting(
        "random",
        "random: seeded 60/20/20 splits, one per seed; matbench: the 5 folds of matbench v0.1 "
        "(test = the fold, validation = a quarter of the rest), --seeds 5",
        choices=("random", "matbench"),
    )
    pretrained: str | None = setting(
        None,
        "use this pre-trained model instead of pre-training ('crystal-twins': the shipped "
        "Crystal Twins encoder, the paper's method; 'mp-eform' / 'mp-multi': the shipped MP "
        "formation-energy / multi-task models, which learned those properties of other MP "
        "crystals: on the mp_* tasks a start with more labels, not pre-training; 'mp-multi-33k' "
        "('default') learned them of most mp_* test crystals too: not for benchmarking those "
        "tasks)",
        default_text="pre-train one",
    )
    encoders: list[str] = setting(
        [DEFAULT_ENCODER],
        "encoders trained from scratch on the same splits, a results column each (cgcnn, gin, "
        "gatgnn, ogcnn or another registered name); CT is pre-trained for the first (or for the "
        "encoder a --pretrained model holds)",
        metavar="ENCODER",
    )
    pretrain_all: bool = setting(
        False, "pre-train and fine-tune CT for every encoder of --encoders, not only the first"
    )
    corpus: list[str] | None = setting(
        None, "pre-training files", default_text="every *.csv.gz in the data root"
    )
    exclude_test: bool = setting(False, "remove every task's test crystals from pre-training")
    ablation: bool = setting(False, "also pre-train with RP / AM+EM / RP+AM+EM and fine-tune each")
    tsne: bool = setting(False, "also draw the t-SNE maps of perovskites test embeddings")
    radius: float | None = same_setting(PretrainConfig, "radius")
    max_neighbors: int | None = same_setting(PretrainConfig, "max_neighbors")
    atom_init: str | None = setting(
        None, "atom_init.json for the element features", default_text="built-in"
    )
    featurize_workers: int = setting(os.cpu_count() or 1, "processes building graph caches")
    accelerator: str = same_setting(PretrainConfig, "accelerator")
    devices: str = same_setting(PretrainConfig, "devices")
    cache_root: str | None = same_setting(PretrainConfig, "cache_root")
    members_together: bool = setting(
        False,
        "fine-tune a task's seeds x methods in one loop with stacked weights (faster on a GPU)",
    )
    lr_schedule: str = same_setting(FinetuneConfig, "lr_schedule")
    encoder_lr_factor: float | None = setting(
        None,
        "the pre-trained encoder's learning rate as a fraction of the head's (e.g. 1.0 for a "
        "supervised start such as 'default', whose recipe it is)",
        default_text="the preset's: paper 0.2 (the paper's), cpu 1.0",
    )
    overwrite: bool = setting(
        False, "remove an earlier benchmark in OUT first (default: continue it)"
    )
    command: str = setting("", "the command line, recorded in the results", cli=False)

    def chosen_preset(self) -> Preset:
        """The preset, with the settings given here in its place (``encoder_lr_factor``)."""
        preset = PRESETS[self.preset]
        if self.encoder_lr_factor is not None:
            preset = replace(preset, encoder_lr_factor=float(self.encoder_lr_factor))
        return preset

    def validate(self) -> None:
        """Check every setting before any work (one-line ValueError / FileNotFoundError)."""
        if not self.data_root:
            raise ValueError(
                "pass --data-root DIR (or set CRYSTALTWINS_DATA) to the folder of the benchmark files"
            )
        if not Path(self.data_root).is_dir():
            raise FileNotFoundError(
                f"{self.data_root}: data root not found (pass --data-root or set CRYSTALTWINS_DATA)"
            )
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; known: {sorted(TASKS)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.protocol not in ("random", "matbench"):
            raise ValueError(f"protocol must be 'random' or 'matbench', got {self.protocol!r}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        factor = self.encoder_lr_factor
        if factor is not None and not (isinstance(factor, int | float) and factor >= 0):
            raise ValueError(f"--encoder-lr-factor must be a number >= 0, got {factor!r}")
        if self.protocol == "matbench" and not (
            0 <= self.first_seed < self.first_seed + self.seeds <= 5
        ):
            raise ValueError(
                "--protocol matbench runs folds 0-4: --first-seed and --seeds pick them "
                f"(got folds {self.first_seed}..{self.first_seed + self.seeds - 1})"
            )
        self._validate_encoders()
        if self.pretrained and (self.exclude_test or self.ablation):
            raise ValueError(
                "--pretrained uses a model as it is: --exclude-test (which acts on pre-training) "
                "and --ablation (which pre-trains its variants alike) need the pre-training here; "
                "leave --pretrained out"
            )
        if self.pretrained and (self.radius is not None or self.max_neighbors is not None):
            raise ValueError(
                "a pre-trained model brings its own graph settings: leave --radius / "
                "--max-neighbors out with --pretrained (CT and scratch must use the same graphs)"
            )
        RunOptions.validate(PretrainConfig(data=["-"], out="-", **self._run_options()))

    def _validate_encoders(self) -> None:
        """``encoders``: at least one, each registered, none twice."""
        from crystaltwins.models.registry import ENCODERS

        if not self.encoders:
            raise ValueError("--encoders: give at least one encoder")
        for name in self.encoders:
            if name not in ENCODERS:
                raise ValueError(
                    f"--encoders: unknown encoder {name!r}; registered: {', '.join(sorted(ENCODERS))}"
                )
        repeated = sorted({name for name in self.encoders if self.encoders.count(name) > 1})
        if repeated:
            raise ValueError(f"--encoders: {', '.join(repeated)} given more than once")

    def _run_options(self) -> dict[str, Any]:
        return {
            "radius": self.radius,
            "max_neighbors": self.max_neighbors,
            "atom_init": self.atom_init,
            "cache_root": self.cache_root,
            "featurize_workers": self.featurize_workers,
            "accelerator": self.accelerator,
            "devices": self.devices,
        }


@dataclass
class BenchContext:
    """A running benchmark: its settings, the tasks it runs, and its progress."""

    config: BenchConfig
    preset: Preset
    tasks: list[BenchmarkTask]
    #: the encoder of the CT column and of the ablation (see :func:`ct_encoders`)
    ct_encoder: str = DEFAULT_ENCODER
    started: float = field(default_factory=time.time)
    runs_total: int = 0
    runs_done: int = 0
    runs_timed: int = 0
    run_seconds: float = 0.0

    @property
    def data_root(self) -> Path:
        return Path(self.config.data_root or "")

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def seeds(self) -> range:
        return range(self.config.first_seed, self.config.first_seed + self.config.seeds)

    @property
    def cache_root(self) -> str | None:
        return self.config.cache_root

    def progress(self, text: str, run_fraction: float = 0.0) -> None:
        """One progress line: runs done, elapsed time, ETA, ``text``; ``run_fraction`` of the
        current run done counts towards the ETA."""
        elapsed = time.time() - self.started
        eta = ""
        if self.runs_timed:
            left = self.runs_total - self.runs_done - run_fraction
            eta = f", ETA {self.run_seconds / self.runs_timed * left / 60:.0f} min"
        print(
            f"[bench {self.runs_done}/{self.runs_total} runs, {elapsed / 60:.1f} min{eta}] {text}",
            flush=True,
        )


def epoch_progress(ctx: BenchContext, label: str, every: int = 10) -> Any:
    """A Lightning callback printing the bench progress (task, seed, epoch, ETA) after every
    ``every``-th fine-tuning epoch and the last one."""
    import lightning as L

    class EpochProgress(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            epoch, total = trainer.current_epoch + 1, trainer.max_epochs or 1
            if trainer.sanity_checking or (epoch % every and epoch != total):
                return
            mae = trainer.callback_metrics.get("val_mae")
            value = f", val MAE {float(mae):.4g}" if mae is not None else ""
            ctx.progress(f"{label}: epoch {epoch}/{total}{value}", epoch / total)

    return EpochProgress()


def run_part(ctx: BenchContext, seed: int) -> str:
    """The folder of a seed's runs under ``runs/<task>/``: ``seedK``, or ``foldK`` (matbench)."""
    return f"fold{seed}" if ctx.config.protocol == "matbench" else f"seed{seed}"


def _finetune_config(
    ctx: BenchContext,
    task: BenchmarkTask,
    seed: int,
    method: str,
    pretrained: Path | None,
    encoder: str = DEFAULT_ENCODER,
) -> FinetuneConfig:
    """The settings of one (task, seed, method) run; CT and scratch differ only in the start
    (``encoder``: the new encoder of a run from scratch; a pre-trained model brings its own).
    The default encoder is left unnamed, as in the runs of benchmarks before ``encoders``."""
    part = run_part(ctx, seed)
    options = ctx.config._run_options()
    if pretrained is not None:  # the model brings its graph settings
        options.update(radius=None, max_neighbors=None)
    return FinetuneConfig(
        data=str(ctx.data_root / task.file),
        target=task.target,
        out=str(ctx.out / "runs" / task.name / part / method),
        pretrained=str(pretrained) if pretrained else None,
        from_scratch=pretrained is None,
        encoder=None if pretrained is not None or encoder == DEFAULT_ENCODER else encoder,
        target_transform=task.transform,
        unit=task.unit,
        lr=ctx.preset.finetune_lr,
        encoder_lr_factor=ctx.preset.encoder_lr_factor,
        lr_schedule=ctx.config.lr_schedule,
        batch_size=ctx.preset.finetune_batch,
        epochs=ctx.preset.finetune_epochs,
        seed=seed,
        fold=seed if ctx.config.protocol == "matbench" else None,
        max_train=ctx.preset.max_train,
        max_eval=ctx.preset.max_eval,
        resume=True,
        progress=False,
        plots=True,
        **options,
    )


def _test_ids(task: BenchmarkTask, seed: int, ctx: BenchContext) -> list[str]:
    """Ids of a task's test crystals for a seed: the split fine-tuning plans (the whole test
    part, a superset of the crystals evaluated when a preset caps them)."""
    from crystaltwins.data.sources import prepare_caches
    from crystaltwins.training.finetune import plan_split, starting_point

    config = _finetune_config(ctx, task, seed, "scratch", None)
    start = starting_point(config)
    (cache,) = prepare_caches(
        [config.data],
        start.settings,
        start.featurizer,
        config.cache_root,
        workers=config.featurize_workers,
        log=None,
    )
    planned = plan_split(config, cache)
    return [str(i) for i in cache.ids[planned.keep[planned.split.test]]]


def _excluded_ids(ctx: BenchContext) -> list[list[str]]:
    """``[source file, id]`` of every task's test crystals, sorted."""
    pairs = {
        (str((ctx.data_root / t.file).resolve()), i)
        for t in ctx.tasks
        for s in ctx.seeds
        for i in _test_ids(t, s, ctx)
    }
    return [list(pair) for pair in sorted(pairs)]


def benchmark_test_ids(config: BenchConfig) -> list[list[str]]:
    """``[source file, id]`` of the test crystals of every task and seed ``config`` runs: the
    crystals whose labels a model given as ``--pretrained`` to that benchmark must not have
    trained on (see ``benchmarks/transfer_source.py``)."""
    config.validate()
    tasks = [TASKS[t] for t in config.tasks if TASKS[t].available]
    return _excluded_ids(BenchContext(config, config.chosen_preset(), tasks))


def _excluded_ids_file(ctx: BenchContext, out: Path) -> Path:
    """``OUT/excluded_test_ids.json``: (source file, id) of every task's test crystals, written
    before the pre-training run claims ``OUT``: the folder (inside the benchmark's own) is marked
    as a run's first, so that the run takes the list for its own file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).touch()
    path = out / EXCLUDED_IDS_FILE
    return write_json_atomic(path, _excluded_ids(ctx), indent=None)


#: What may differ between a finished run and the run a benchmark would make now for it to be
#: reused: how it ran, not what it computed (unlike ``--resume``, not its number of epochs).
REUSE_MAY_DIFFER = RESUMABLE_CHANGES - {"epochs"}


def check_reusable(
    out: Path, config: PretrainConfig | FinetuneConfig, more: Sequence[str] = ()
) -> None:
    """Refuse to reuse the finished run in ``out`` when it was made with other settings than
    ``config`` (its ``config.yaml``: a benchmark with another preset, encoder, data, ...).

    :param more: differences found otherwise, as ``what: before -> now``.
    :raises ValueError: one line naming the differences; nothing was changed."""
    differences = [*config_differences(out, config, REUSE_MAY_DIFFER), *more]
    if differences:
        raise ValueError(
            f"{out}: holds a finished run with other settings than this benchmark's "
            f"({'; '.join(differences)}); nothing was changed; run the benchmark with "
            "--overwrite to replace the earlier one, or give another --out"
        )


def run_method(encoder: str, variant: str | None = None) -> str:
    """The folder of a run under ``OUT/runs/TASK/seedK``: ``scratch`` (``variant`` ``None``),
    ``ct`` (:data:`CT_VARIANT`) or ``ct_<variant>`` (ablation) for :data:`DEFAULT_ENCODER`, as
    before encoders could be chosen; ``_<encoder>`` appended for another encoder."""
    if variant is None:
        base = "scratch"
    else:
        base = "ct" if variant == CT_VARIANT else f"ct_{_variant_slug(variant)}"
    return base if encoder == DEFAULT_ENCODER else f"{base}_{encoder}"


def pretrain_name(encoder: str, variant: str) -> str:
    """The folder of a pre-training under ``OUT/pretrain``: ``rp_am_em`` for the default
    encoder's RP+AM+EM, ``rp_am_em_gin`` for GIN's."""
    slug = _variant_slug(variant)
    return slug if encoder == DEFAULT_ENCODER else f"{slug}_{encoder}"


def _variant_slug(variant: str) -> str:
    return variant.replace("+", "_").lower()


def encoder_label(encoder: str) -> str:
    """How the tables name an encoder: ``gin`` → ``GIN``."""
    return encoder.upper()


def ct_encoders(config: BenchConfig) -> tuple[str, list[str]]:
    """``(the CT column's encoder, every encoder CT is fine-tuned for)``: the encoder of the
    ``pretrained`` model, else the first of ``encoders``; with ``pretrain_all``, every one of
    ``encoders``. Checked before any work: a ``pretrained`` model's encoder must be among
    ``encoders`` (CT is compared with the same encoder from scratch)."""
    primary = config.encoders[0]
    if config.pretrained:
        from crystaltwins.models.checkpoint import load_model, resolve_model_path
        from crystaltwins.models.registry import ENCODERS, name_of

        model = resolve_model_path(config.pretrained)
        primary = name_of(ENCODERS, "encoder", load_model(model).encoder)
        if primary not in config.encoders:
            raise ValueError(
                f"--pretrained {config.pretrained} holds a {primary} encoder, which is not among "
                f"--encoders {' '.join(config.encoders)}: add it (CT is compared with the same "
                "encoder trained from scratch)"
            )
    others = [e for e in config.encoders if e != primary] if config.pretrain_all else []
    return primary, [primary, *others]


def pretrain_for_bench(
    ctx: BenchContext,
    corpus: list[Path],
    augment: str,
    name: str,
    exclude_test: bool,
    encoder: str = DEFAULT_ENCODER,
) -> Path:
    """The pre-trained model ``OUT/pretrain/NAME/model.pt`` of ``encoder`` (reused when there)."""
    from crystaltwins.training.pretrain import pretrain

    out = ctx.out / "pretrain" / name
    model = out / "model.pt"
    config = PretrainConfig(
        data=[str(c) for c in corpus],
        out=str(out),
        augment=augment,
        lr=ctx.preset.pretrain_lr,
        batch_size=ctx.preset.pretrain_batch,
        epochs=ctx.preset.pretrain_epochs,
        max_crystals=ctx.preset.pretrain_max_crystals,
        exclude_ids_file=str(out / EXCLUDED_IDS_FILE) if exclude_test else None,
        resume=True,
        progress=False,
        encoder=None if encoder == DEFAULT_ENCODER else encoder,
        **ctx.config._run_options(),
    )
    if model.exists():
        check_reusable(out, config, _exclusion_differences(ctx, out, exclude_test))
        ctx.progress(f"pre-training {name}: reusing {model}")
        return model
    if exclude_test:
        _excluded_ids_file(ctx, out)
    ctx.progress(f"pre-training {name} ({encoder}, {augment}) on {len(corpus)} files")
    return pretrain(config)


def _exclusion_differences(ctx: BenchContext, out: Path, exclude_test: bool) -> list[str]:
    """How the test crystals a finished pre-training run left out (``exclude_test``) differ
    from those of this benchmark's tasks and seeds (``[]``: the same)."""
    stored = out / EXCLUDED_IDS_FILE
    if not exclude_test or not stored.exists():
        return []  # without the exclusion, config.yaml says so (exclude_ids_file)
    before, now = json.loads(stored.read_text()), _excluded_ids(ctx)
    if before == now:
        return []
    return [f"excluded test crystals of other tasks or seeds: {len(before)} -> {len(now)}"]


def finetune_for_bench(
    ctx: BenchContext,
    task: BenchmarkTask,
    seed: int,
    method: str,
    pretrained: Path | None,
    encoder: str = DEFAULT_ENCODER,
) -> dict[str, Any]:
    from crystaltwins.evaluation.runs import finetune

    config = _finetune_config(ctx, task, seed, method, pretrained, encoder)
    metrics_file = Path(config.out) / "metrics.json"
    if metrics_file.exists():
        check_reusable(Path(config.out), config)
        ctx.runs_done += 1
        return json.loads(metrics_file.read_text())
    split = "fold" if ctx.config.protocol == "matbench" else "seed"
    label = f"{task.name} {split} {seed} {method}"
    ctx.progress(f"{label}: {ctx.preset.finetune_epochs} epochs")
    started = time.time()
    metrics = finetune(config, callbacks=[epoch_progress(ctx, label)])
    ctx.runs_done += 1
    ctx.runs_timed += 1
    ctx.run_seconds += time.time() - started
    return metrics


def finetune_task_together(
    ctx: BenchContext, task: BenchmarkTask, models: dict[str, dict[str, Path]]
) -> None:
    """The task's unfinished runs of :data:`TRAINED_TOGETHER` encoders (every seed, scratch
    and each pre-trained variant) trained in one loop
    (:func:`~crystaltwins.evaluation.runs.finetune_together`); the results table then reads
    their ``metrics.json`` as those of runs finished earlier."""
    from crystaltwins.evaluation.runs import finetune_together

    configs = []  # (architecture, config): a pre-trained run's config names no encoder
    for seed in ctx.seeds:
        for encoder in ctx.config.encoders:
            if encoder in TRAINED_TOGETHER:
                config = _finetune_config(ctx, task, seed, run_method(encoder), None, encoder)
                configs.append((encoder, config))
        for encoder, variants in models.items():
            if encoder in TRAINED_TOGETHER:
                for label, model in variants.items():
                    method = run_method(encoder, label)
                    config = _finetune_config(ctx, task, seed, method, model, encoder)
                    configs.append((encoder, config))
    by_encoder: dict[str, list[Any]] = {}  # one stack per architecture
    for encoder, config in configs:
        if (Path(config.out) / "metrics.json").exists():
            check_reusable(Path(config.out), config)  # before any training
        else:
            by_encoder.setdefault(encoder, []).append(config)
    for encoder, group in by_encoder.items():
        ctx.progress(
            f"{task.name}: {len(group)} {encoder} runs trained together, "
            f"{ctx.preset.finetune_epochs} epochs"
        )
        started = time.time()
        finetune_together(group)
        ctx.runs_timed += len(group)
        ctx.run_seconds += time.time() - started


def _use_subsets(ctx: BenchContext, corpus: list[Path]) -> list[Path]:
    """Point ``ctx`` at subsets of its files (see :attr:`Preset.subset_rows`) in ``OUT/data``;
    returns the new corpus. Existing subsets are reused."""
    rows = int(ctx.preset.subset_rows or 0)
    folder = ctx.out / "data"
    task_files = {str(t.file) for t in ctx.tasks}
    share = -(-int(ctx.preset.pretrain_max_crystals or rows) // max(1, len(corpus)))
    for name in task_files:
        write_subset(ctx.data_root / name, folder / name, rows)
    subsets = []
    for path in corpus:
        if path.name not in task_files:
            write_subset(path, folder / path.name, min(rows, share))
        subsets.append(folder / path.name)
    ctx.config = replace(ctx.config, data_root=str(folder))
    return subsets


def write_subset(source: Path, target: Path, rows: int) -> Path:
    """The header and first ``rows`` rows of the CSV(.gz) ``source`` written to ``target``
    (atomically; an existing ``target`` is kept)."""
    import csv
    import gzip

    if target.exists():
        return target
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such data file")
    csv.field_size_limit(2**31 - 1)  # CIF fields are long
    opener = gzip.open if source.suffix == ".gz" else open
    with (
        atomic_path(target) as tmp,
        opener(source, "rt", newline="") as reader,
        gzip.open(tmp, "wt", newline="") as writer,
    ):
        out = csv.writer(writer)
        for k, row in enumerate(csv.reader(reader)):
            if k > rows:
                break
            out.writerow(row)
    return target


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.array(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _signed(percent: float | None) -> str:
    return "–" if percent is None else f"{percent:+.1f}%"


def _mean_cell(stats: dict[str, Any]) -> str:
    """``mean ± std`` of a results cell, or ``mean (1 run)`` when one value has no spread."""
    if len(stats.get("values", [])) == 1:
        return f"{stats['mean']:.4f} (1 run)"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def summarize(results: dict[str, Any]) -> str:
    """``results.md``: the table of test MAEs, ours beside the paper's (and, with several
    encoders, :func:`encoders_md`)."""
    encoder = results.get("ct_encoder", DEFAULT_ENCODER)
    name = encoder_label(encoder)
    title = f"# Crystal Twins benchmark ({results['preset']['name']} preset)"
    if results["preset"].get("pipeline_check"):
        title = f"# Pipeline check ({results['preset']['name']} preset): these numbers mean nothing"
    lines = [
        title,
        "",
        f"Command: `{results['command']}`  ",
        f"Date: {results['date']}; machine: {results['machine']}; training time of all runs {results['wall_minutes']:.0f} min  ",
        f"Pre-training corpus: {results['corpus_description']}  ",
        f"Preset: {results['preset']['description']}"
        + (
            f" (learning rates: {results['lr_schedule']})"
            if results.get("lr_schedule", "constant") != "constant"
            else ""
        )
        + (
            f" (pre-trained encoder at {results['encoder_lr_factor']:g}x the head's learning rate)"
            if results.get("encoder_lr_factor") is not None
            else ""
        )
        + "  ",
        f"Splits: {results['protocol']}",
        "",
        f"Test MAE, mean ± std over {'folds' if 'matbench' in results['protocol'] else 'seeds'} "
        f"(our {name} from scratch vs our CT fine-tuned; paper's numbers beside).",
        "",
        f"| task | unit | n train/val/test | {name} (ours) | CT (ours) | CT vs {name} | paper {name} | paper CT | paper gain | data |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["tasks"]:
        paper_scratch = row.get("paper_baselines", {}).get(encoder)
        paper_ct = row["paper_ct"] if encoder == PAPER_CT_ENCODER else None
        if row.get("skipped"):
            lines.append(
                f"| {row['task']} | {row['unit']} | – | – | – | – | {paper_scratch or '–'} | {paper_ct or '–'} | | {row['note']} |"
            )
            continue
        s, c = row["scratch"], row["ct"]
        gain = row["improvement_percent"]
        pg = row.get("paper_improvement_percent")
        lines.append(
            f"| {row['task']} | {row['unit']} | {row['sizes']} | {_mean_cell(s)} | {_mean_cell(c)} | "
            f"{gain:+.1f}% | {paper_scratch or '–'} | {paper_ct or '–'} | {f'{pg:+.1f}%' if pg is not None else '–'} | {row['note']} |"
        )
    leaderboard = [
        f"{row['task']}: "
        + ", ".join(f"{model} {mae:g}" for model, mae in row["matbench_leaderboard"].items())
        + f" {row['unit']}"
        for row in results["tasks"]
        if row.get("matbench_leaderboard")
    ]
    if leaderboard:
        comparable = all(
            row.get("matbench_comparable", True)
            for row in results["tasks"]
            if row.get("matbench_leaderboard")
        )
        where = (
            "on the same 5 folds"
            if comparable
            else "(not comparable with this run: it used fewer than the 5 folds or capped "
            "training / test sets)"
        )
        lines += [
            "",
            f"matbench v0.1 leaderboard {where} (test MAE, mean over folds): "
            + "; ".join(leaderboard)
            + ".",
        ]
    if results.get("average_improvement_percent") is not None:
        lines += [
            "",
            f"Average improvement of CT over CGCNN on the paper's tasks run here: {results['average_improvement_percent']:+.1f}% (paper, the same tasks: {_signed(results.get('paper_average_improvement_percent'))}; its claim: +15.6% over 7 tasks). Positive = CT has the lower MAE.",
        ]
    if len(results.get("encoders", [])) > 1:
        lines += ["", encoders_md(results)]
    return "\n".join(lines) + "\n"


def encoders_md(results: dict[str, Any]) -> str:
    """The encoders' table (each encoder from scratch, CT where run, the paper's supervised
    number beside) and :func:`ranking_sentence`."""
    encoders, with_ct = results["encoders"], results.get("ct_encoders", [])
    header, rule = ["task", "unit"], ["---", "---"]
    for e in encoders:
        header += [f"{encoder_label(e)} (ours)"] + (
            [f"CT-{encoder_label(e)} (ours)"] if e in with_ct else []
        )
        header.append(f"paper {encoder_label(e)}")
    rule += ["---"] * (len(header) - 2)
    lines = [
        "## Encoders: test MAE, mean ± std over seeds",
        "",
        "Each encoder trained from scratch on the same splits (CT: pre-trained with Crystal Twins, "
        "then fine-tuned); paper: its Table 2, supervised.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(rule) + "|",
    ]

    def cell(stats: dict[str, Any] | None) -> str:
        return _mean_cell(stats) if stats else "–"

    for row in results["tasks"]:
        cells = [row["task"], row["unit"]]
        ours = row.get("encoders", {})
        for e in encoders:
            cells.append(cell(ours.get(e, {}).get("scratch")))
            if e in with_ct:
                cells.append(cell(ours.get(e, {}).get("ct")))
            cells.append(str(row.get("paper_baselines", {}).get(e, "–")))
        lines.append("| " + " | ".join(cells) + " |")
    sentence = ranking_sentence(results.get("encoder_ranking", {"tasks": []}))
    return "\n".join(lines) + (f"\n\n{sentence}" if sentence else "")


def run_bench(
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    config: BenchConfig | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run the benchmark; see the module docstring. Returns what goes to ``results.json``.

    :param settings: the other fields of :class:`BenchConfig` (or give a whole ``config``).

    A results folder that holds an earlier benchmark is continued (finished runs are reused);
    ``overwrite`` removes that benchmark's files first. A folder holding other files is refused.
    """
    if config is None:
        if out is None:
            raise ValueError("run_bench needs out (or a whole config)")
        root = data_root if data_root is not None else os.environ.get("CRYSTALTWINS_DATA")
        config = BenchConfig(
            out=str(out), data_root=str(root) if root is not None else None, **settings
        )
    if config.data_root is None and os.environ.get("CRYSTALTWINS_DATA"):
        config = replace(config, data_root=os.environ["CRYSTALTWINS_DATA"])
    config.validate()
    primary, with_ct = ct_encoders(config)
    if config.tsne and primary != DEFAULT_ENCODER:
        raise ValueError(f"--tsne maps the {DEFAULT_ENCODER} runs: CT is {primary}'s here")
    chosen = [TASKS[t] for t in (config.tasks or PAPER_TASKS)]
    ctx = BenchContext(
        config, config.chosen_preset(), [t for t in chosen if t.available], ct_encoder=primary
    )
    # Held until this function returns (or the process ends): one benchmark per folder.
    lock = claim_run_folder(ctx.out, overwrite=config.overwrite, known=BENCH_FILES, continues=True)
    try:
        variants = ABLATION if config.ablation else {CT_VARIANT: "rp,am,em"}
        runs_per_seed = len(config.encoders) + len(variants) + len(with_ct) - 1
        ctx.runs_total = len(ctx.tasks) * config.seeds * runs_per_seed
        models = _pretrained_models(ctx, variants, with_ct)
        if config.pretrained:
            _note_learned_labels(config.pretrained, models[primary][CT_VARIANT], ctx)
        rows, ablation_rows = _task_rows(ctx, chosen, models)
        results = _results(ctx, models, rows)
        _write_results(ctx, results, ablation_rows)
    finally:
        lock.release()
    return results


def tasks_with_learned_labels(model: Path, tasks: Sequence[BenchmarkTask]) -> list[str]:
    """The ``tasks`` whose property a fine-tuned starting ``model`` learned (its target or an
    auxiliary target) on crystals of the same file: there it is a start with more labels of
    that property, not pre-training. A pre-trained encoder learned no labels: none."""
    from crystaltwins.models.checkpoint import load_model
    from crystaltwins.models.property_model import Target, aux_target_columns

    bundle = load_model(model)
    if bundle.kind != "finetuned":
        return []
    source = Path(str(bundle.info.get("data_source") or "")).name
    learned = {Target.from_info(bundle.info).column, *aux_target_columns(bundle.info)}
    return [t.name for t in tasks if t.file == source and t.target in learned]


def learned_test_labels(
    model: Path, tasks: Sequence[BenchmarkTask], test_ids: dict[str, list[str]]
) -> dict[str, tuple[int, int]]:
    """Task → (how many of its test crystals ``test_ids[task]`` the starting ``model`` learned
    the labels of, how many there are), for the ``tasks`` whose property it learned
    (:func:`tasks_with_learned_labels`); ``(-1, n)`` when its file records no crystal ids."""
    from crystaltwins.models.checkpoint import load_model
    from crystaltwins.models.provenance import seen_ids

    info = load_model(model).info
    learned = set(tasks_with_learned_labels(model, tasks))
    counts: dict[str, tuple[int, int]] = {}
    for task in tasks:
        if task.name in learned:
            ids = test_ids[task.name]
            seen = seen_ids(info, ids, task.file)
            counts[task.name] = (-1 if seen is None else len(seen), len(ids))
    return counts


def _note_learned_labels(name: str, model: Path, ctx: BenchContext) -> None:
    """Say which tasks are not transfer for a given ``--pretrained`` model: a warning with the
    counts where it learned the labels of the benchmark's own test crystals, a note where it
    learned only other crystals' or its file does not say which (a line each)."""
    learned = tasks_with_learned_labels(model, ctx.tasks)
    if not learned:
        return
    test_ids = {
        t.name: sorted({i for s in ctx.seeds for i in _test_ids(t, s, ctx)})
        for t in ctx.tasks
        if t.name in learned
    }
    counts = learned_test_labels(model, ctx.tasks, test_ids)
    seen = {task: count for task, count in counts.items() if count[0] > 0}
    if seen:
        listed = "; ".join(f"{k:,} of the {n:,} test crystals of {t}" for t, (k, n) in seen.items())
        print(
            f"warning: --pretrained {name} learned the labels of {listed}: "
            "its CT results there are not benchmark results",
            flush=True,
        )
    unknown = [task for task, (k, _) in counts.items() if k < 0]
    if unknown:
        print(
            f"note: --pretrained {name} learned the property of {', '.join(unknown)} on crystals "
            "of the same file, which its file does not record: their test crystals may be "
            "among them",
            flush=True,
        )
    clean = [task for task, (k, _) in counts.items() if k == 0]
    if clean:
        print(
            f"note: --pretrained {name} learned the property of {', '.join(clean)} on other "
            "crystals of the same file: there CT is a start with more labels, not pre-training "
            "(each run counts the validation crystals it saw: seen_by_starting_model in "
            "metrics.json)",
            flush=True,
        )


def _pretrained_models(
    ctx: BenchContext, variants: dict[str, str], with_ct: list[str]
) -> dict[str, dict[str, Path]]:
    """encoder → variant → pre-trained model (given, reused or pre-trained): every augmentation
    variant for the CT encoder (``ctx.ct_encoder``), the RP+AM+EM one for the other encoders of
    ``with_ct``."""
    config = ctx.config
    corpus = (
        [Path(c) for c in config.corpus]
        if config.corpus
        else sorted(ctx.data_root.glob("*.csv.gz"))
    )
    if not corpus and not config.pretrained:
        raise FileNotFoundError(
            f"{ctx.data_root}: no *.csv.gz files to pre-train on (or give --corpus)"
        )
    if ctx.preset.subset_rows:
        corpus = _use_subsets(ctx, [] if config.pretrained else corpus)
    models: dict[str, dict[str, Path]] = {encoder: {} for encoder in with_ct}
    if config.pretrained:
        from crystaltwins.models.checkpoint import resolve_model_path

        models[ctx.ct_encoder][CT_VARIANT] = resolve_model_path(config.pretrained)
    for encoder in with_ct:
        asked = variants if encoder == ctx.ct_encoder else {CT_VARIANT: variants[CT_VARIANT]}
        for label, augment in asked.items():
            if label not in models[encoder]:
                models[encoder][label] = pretrain_for_bench(
                    ctx,
                    corpus,
                    augment,
                    pretrain_name(encoder, label),
                    config.exclude_test,
                    encoder,
                )
    return models


def _task_rows(
    ctx: BenchContext, chosen: list[BenchmarkTask], models: dict[str, dict[str, Path]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[float]]]]:
    """Train every encoder from scratch and fine-tune every pre-trained model on every task and
    seed: the rows of the results table, and the ablation's test MAEs (variant -> task -> per
    seed, of the CT encoder)."""
    rows: list[dict[str, Any]] = []
    ablation_rows: dict[str, dict[str, list[float]]] = {
        label: {} for label in models[ctx.ct_encoder]
    }
    for task in chosen:
        base = {
            "task": task.name,
            "unit": task.unit,
            "paper_cgcnn": task.paper_cgcnn,
            "paper_ct": task.paper_ct,
            "paper_baselines": dict(task.paper_baselines),
            "note": task.note,
        }
        if ctx.config.protocol == "matbench" and task.matbench_leaderboard:
            base["matbench_leaderboard"] = dict(task.matbench_leaderboard)
            # its numbers are means over all 5 folds, whole training and test folds
            base["matbench_comparable"] = (
                ctx.config.first_seed == 0
                and ctx.config.seeds == 5
                and ctx.preset.max_train is None
                and ctx.preset.max_eval is None
            )
        if not task.available:
            rows.append({**base, "skipped": True})
            continue
        if ctx.config.members_together:
            finetune_task_together(ctx, task, models)
        scratch: dict[str, list[float]] = {e: [] for e in ctx.config.encoders}
        ct: dict[str, list[float]] = {e: [] for e in models}
        sizes = ""
        for seed in ctx.seeds:
            for encoder in ctx.config.encoders:
                m = finetune_for_bench(ctx, task, seed, run_method(encoder), None, encoder)
                scratch[encoder].append(m["test"]["mae"])
                sizes = f"{m['crystals']['train']}/{m['crystals']['val']}/{m['crystals']['test']}"
            for encoder, variants in models.items():
                for label, model in variants.items():
                    method = run_method(encoder, label)
                    m = finetune_for_bench(ctx, task, seed, method, model, encoder)
                    if encoder == ctx.ct_encoder:
                        ablation_rows[label].setdefault(task.name, []).append(m["test"]["mae"])
                    if label == CT_VARIANT:
                        ct[encoder].append(m["test"]["mae"])
        rows.append(_task_row(base, sizes, scratch, ct, ctx.ct_encoder))
    return rows, ablation_rows


def _task_row(
    base: dict[str, Any],
    sizes: str,
    scratch: dict[str, list[float]],
    ct: dict[str, list[float]],
    ct_encoder: str,
) -> dict[str, Any]:
    """One task's row: ``scratch`` / ``ct`` of the CT encoder (the main table), and
    ``encoders``: each encoder's test MAEs from scratch and, where run, after CT."""
    s_mean, s_std = _mean_std(scratch[ct_encoder])
    c_mean, c_std = _mean_std(ct[ct_encoder])
    row = {
        **base,
        "sizes": sizes,
        "scratch": {"mean": s_mean, "std": s_std, "values": scratch[ct_encoder]},
        "ct": {"mean": c_mean, "std": c_std, "values": ct[ct_encoder]},
        "improvement_percent": 100 * (s_mean - c_mean) / s_mean,
        "encoders": {
            encoder: {
                "scratch": _stats(values),
                **({"ct": _stats(ct[encoder])} if encoder in ct else {}),
            }
            for encoder, values in scratch.items()
        },
    }
    paper_cgcnn, paper_ct = base["paper_cgcnn"], base["paper_ct"]
    if ct_encoder == PAPER_CT_ENCODER and paper_cgcnn and paper_ct:
        row["paper_improvement_percent"] = 100 * (paper_cgcnn - paper_ct) / paper_cgcnn
    return row


def _stats(values: list[float]) -> dict[str, Any]:
    mean, std = _mean_std(values)
    return {"mean": mean, "std": std, "values": values}


def encoder_ranking(rows: list[dict[str, Any]], encoders: list[str]) -> dict[str, Any]:
    """Our ranking of ``encoders`` from scratch (mean test MAE, lowest first) beside the
    paper's (Table 2) on every task run where the paper has at least two of them, and each
    encoder's mean rank over those tasks, ours and the paper's."""
    tasks = []
    for row in rows:
        if row.get("skipped"):
            continue
        paper = row.get("paper_baselines", {})
        known = [e for e in encoders if e in paper]
        if len(known) < 2:
            continue
        ours = sorted(known, key=lambda e: row["encoders"][e]["scratch"]["mean"])
        theirs = sorted(known, key=lambda e: paper[e])
        tasks.append({"task": row["task"], "ours": ours, "paper": theirs, "same": ours == theirs})
    ranked = sorted({e for t in tasks for e in t["ours"]}, key=encoders.index)

    def mean_rank(which: str) -> dict[str, float]:
        return {
            e: float(np.mean([t[which].index(e) + 1 for t in tasks if e in t[which]]))
            for e in ranked
        }

    return {"tasks": tasks, "mean_rank": {"ours": mean_rank("ours"), "paper": mean_rank("paper")}}


def ranking_sentence(ranking: dict[str, Any]) -> str:
    """Where our ranking of the encoders differs from the paper's, in words (from
    :func:`encoder_ranking`); ``""`` when no task compares two encoders."""
    tasks = ranking["tasks"]
    if not tasks:
        return ""

    def order(names: list[str]) -> str:
        return " < ".join(encoder_label(e) for e in names)

    differ = [t for t in tasks if not t["same"]]
    agree = [t["task"] for t in tasks if t["same"]]
    if not differ:
        text = (
            f"Our ranking of the encoders from scratch (lowest test MAE first) is the paper's on "
            f"every task compared ({', '.join(agree)})."
        )
    else:
        listed = "; ".join(
            f"{t['task']} (ours {order(t['ours'])}, paper {order(t['paper'])})" for t in differ
        )
        text = (
            f"Our ranking of the encoders from scratch (lowest test MAE first) differs from the "
            f"paper's on {len(differ)} of {len(tasks)} tasks: {listed}."
        )
        if agree:
            text += f" It is the paper's on {', '.join(agree)}."

    def ranks(which: str) -> str:
        means = ranking["mean_rank"][which]
        return ", ".join(
            f"{encoder_label(e)} {r:.1f}" for e, r in sorted(means.items(), key=lambda kv: kv[1])
        )

    return text + f" Mean rank over these tasks, ours: {ranks('ours')}; paper: {ranks('paper')}."


def _results(
    ctx: BenchContext, models: dict[str, dict[str, Path]], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """What goes to ``results.json`` (the ablation added by :func:`_write_results`)."""
    config = ctx.config
    improvements = [r["improvement_percent"] for r in rows if "paper_improvement_percent" in r]
    paper_gains = [r["paper_improvement_percent"] for r in rows if "paper_improvement_percent" in r]
    corpus_sizes = _corpus_description(models[ctx.ct_encoder].get(CT_VARIANT))
    return {
        "command": config.command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} ({_device_name()})",
        "wall_minutes": _compute_minutes(ctx.out),
        "preset": {
            "name": ctx.preset.name,
            "description": ctx.preset.description,
            **{
                k: v
                for k, v in vars(ctx.preset).items()
                if k not in ("name", "description", "summary")
            },
        },
        "seeds": config.seeds,
        "lr_schedule": config.lr_schedule,
        "encoder_lr_factor": config.encoder_lr_factor,
        "protocol": config.protocol
        + (
            " (matbench v0.1 folds: KFold(5, shuffle=True, random_state=18012019), validation a "
            "quarter of the training folds; 'seeds' are folds)"
            if config.protocol == "matbench"
            else " (seeded random 60/20/20 splits)"
        ),
        "exclude_test": config.exclude_test,
        "corpus_description": corpus_sizes
        + (
            " (benchmark test crystals excluded)"
            if config.exclude_test
            else " (test crystals not excluded, as in the paper)"
        ),
        "pretrained_models": {
            (label if encoder == ctx.ct_encoder else f"{label} ({encoder})"): str(model)
            for encoder, variants in models.items()
            for label, model in variants.items()
        },
        "encoders": list(config.encoders),
        "ct_encoder": ctx.ct_encoder,
        "ct_encoders": list(models),
        "encoder_ranking": encoder_ranking(rows, list(config.encoders)),
        "tasks": rows,
        "average_improvement_percent": float(np.mean(improvements)) if improvements else None,
        # the paper's own gain averaged over the same tasks (its +15.6% covers 7)
        "paper_average_improvement_percent": float(np.mean(paper_gains)) if paper_gains else None,
    }


def _write_results(
    ctx: BenchContext,
    results: dict[str, Any],
    ablation_rows: dict[str, dict[str, list[float]]],
) -> None:
    """``results.json`` and ``results.md``, then the ablation chart and t-SNE maps when asked
    for (a figure that fails costs a warning, not the tables)."""
    ablation, rows = ctx.config.ablation, results["tasks"]
    if ablation:
        results["ablation"] = {
            label: {t: _mean_std(v) for t, v in per_task.items()}
            for label, per_task in ablation_rows.items()
        }
    tsne = ctx.config.tsne and "perovskites" in [t.name for t in ctx.tasks]
    if tsne:
        results["tsne"] = str(ctx.out / "tsne_perovskites.png")

    def write_tables() -> None:  # strict JSON: a diverged seed's NaN is written null
        write_text_atomic(ctx.out / "results.json", metrics_json(results))
        write_text_atomic(
            ctx.out / "results.md",
            summarize(results) + (_ablation_md(results) if ablation else ""),
        )

    write_tables()
    figures = []
    if ablation:
        from crystaltwins.evaluation.figures import ablation_chart

        scratch = {
            r["task"]: (r["scratch"]["mean"], r["scratch"]["std"]) for r in rows if "scratch" in r
        }
        figures.append(
            ("ablation chart", lambda: ablation_chart(
                results["ablation"], ctx.out / "ablation.png", baseline=scratch
            ))
        )  # fmt: skip
    if tsne:
        from crystaltwins.evaluation.figures import perovskite_tsne

        part = run_part(ctx, ctx.seeds[0])
        figures.append(
            ("t-SNE map", lambda: perovskite_tsne(ctx, ctx.out / "tsne_perovskites.png", part))
        )
    for name, draw in figures:
        try:
            draw()
        except Exception as error:  # noqa: BLE001 - the tables are written: say so, go on
            ctx.progress(f"warning: the {name} was not drawn ({type(error).__name__}: {error})")
            if name == "t-SNE map":
                results.pop("tsne", None)
                write_tables()
    ctx.progress(f"done: {ctx.out / 'results.md'}")


def _ablation_md(results: dict[str, Any]) -> str:
    """The ablation table: the CT encoder from scratch, then every pre-training variant."""
    ablation: dict[str, dict[str, tuple[float, float]]] = results["ablation"]
    scratch = {r["task"]: r["scratch"] for r in results["tasks"] if "scratch" in r}
    tasks = sorted({t for per in ablation.values() for t in per})
    lines = [
        "",
        "## Augmentation ablation (paper Fig. 2): test MAE, mean ± std",
        "",
        f"| task | {encoder_label(results.get('ct_encoder', DEFAULT_ENCODER))} (scratch) | "
        + " | ".join(f"CT {a}" for a in ablation)
        + " |",
        "|---|---|" + "---|" * len(ablation),
    ]
    for t in tasks:
        base = _mean_cell(scratch[t]) if t in scratch else "–"
        one_run = t in scratch and len(scratch[t].get("values", [])) == 1  # the same seeds
        lines.append(
            f"| {t} | {base} | "
            + " | ".join(
                f"{ablation[a][t][0]:.4f} (1 run)"
                if one_run
                else f"{ablation[a][t][0]:.4f} ± {ablation[a][t][1]:.4f}"
                for a in ablation
            )
            + " |"
        )
    return "\n".join(lines) + "\n\n![ablation](ablation.png)\n"


def _corpus_description(model: Path | None) -> str:
    if model is None or not model.exists():
        return "unknown"
    from crystaltwins.models.checkpoint import load_model

    info = load_model(model).info
    if info.get("published"):
        return f"published Crystal Twins weights ({model.name})"
    n = info.get("crystals", {})
    if info.get("target_column"):  # a fine-tuned model: supervised transfer
        source = Path(str(info.get("data_source", "?"))).name
        return f"supervised on {info['target_column']} of {source} ({n.get('train', '?')} training crystals)"
    sources = ", ".join(Path(s).name for s in info.get("data_sources", []))
    return f"{sources}: {n.get('train', '?')} training + {n.get('val', '?')} validation crystals, {info.get('epochs')} epochs"


def _compute_minutes(out: Path) -> float:
    """Training time of every run of this results directory (pre-training + fine-tuning), in
    minutes: what the benchmark costs, also when it was run in several sittings."""
    seconds = 0.0
    for path in [
        *out.glob("runs/*/seed*/*/metrics.json"),
        *out.glob("runs/*/fold*/*/metrics.json"),
    ]:
        seconds += float(json.loads(path.read_text()).get("seconds", 0.0))
    for path in out.glob("pretrain/*/model.pt"):
        from crystaltwins.models.checkpoint import load_model

        seconds += float(load_model(path).info.get("seconds", 0.0))
    return seconds / 60


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"


__all__ = ["PRESETS", "BenchConfig", "Preset", "replace", "run_bench"]
