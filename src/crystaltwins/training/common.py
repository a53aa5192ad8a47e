"""What pre-training and fine-tuning share: the Lightning trainer, safe checkpoints, configs."""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import errno
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.atomic import atomic_path, write_text_atomic
from crystaltwins.training.configs import RunOptions
from crystaltwins.training.run_folder import epochs_done, with_working_dir


def cache_graph_settings(source: str | os.PathLike) -> GraphSettings | None:
    """The graph settings a graph cache folder ``source`` was built with (``None`` when
    ``source`` is not a graph cache): a run on a cache takes its settings unless told others."""
    manifest = Path(source) / "manifest.json"
    if not (Path(source).is_dir() and manifest.is_file()):
        return None
    try:
        key = json.loads(manifest.read_text())["key"]["graph_settings"]
    except (ValueError, KeyError, TypeError):
        return None  # opening it says what is wrong
    return GraphSettings.from_dict(key)


def run_graph_settings(
    config: RunOptions,
    source: str | os.PathLike,
    model: GraphSettings | None = None,
    **more: Any,
) -> GraphSettings:
    """The graph settings of a run: a pre-trained ``model``'s (asking for other ``radius`` /
    ``max_neighbors`` is an error: the encoder was trained on those graphs), else those asked
    for, completed by the graph cache ``source``'s own, else the defaults.

    :param more: further :class:`GraphSettings` fields (e.g. ``perturbation_margin``).
    :raises ValueError: a model with other settings than those asked for."""
    if model is not None:
        conflicts = config.graph_conflicts(model)
        if conflicts:
            raise ValueError(
                f"the pre-trained model brings its own graph settings; asked for "
                f"{', '.join(conflicts)}: leave --radius / --max-neighbors out, or train from "
                "scratch"
            )
        return GraphSettings(**{**dataclasses.asdict(model), **more})
    return config.graph_settings(cache_graph_settings(source), **more)


def is_main_process() -> bool:
    """False in the other processes of a multi-process (data-parallel) run.

    Lightning starts the ranks > 0 of a ``--devices N`` run by running the command again with the
    rank in the environment; their messages would repeat those of rank 0.
    """
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def main_print(*args: Any, **kwargs: Any) -> None:
    """``print`` on the main process only (see :func:`is_main_process`)."""
    if is_main_process():
        print(*args, **kwargs)


def quiet_lightning() -> None:
    """Hide Lightning's banners and known-harmless warnings; errors and progress stay."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for message in (
        r".*isinstance\(treespec, LeafSpec\)",
        r"The number of training batches .* is smaller than the logging interval",
        r"Sparse CSR tensor support is in beta state",
        r"The given NumPy array is not writable",
        r".*does not have many workers which may be a bottleneck",
        r"Checkpoint directory .* exists and is not empty",
    ):
        warnings.filterwarnings("ignore", message=message)


class EpochHistory(Callback):
    """``history.csv`` in the run directory: one row per epoch with the epoch-level metrics.

    Written atomically at the end of every epoch (after its validation); a resumed run keeps the rows of the epochs it
    does not redo (Lightning's own CSV logger starts a new file on resume).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        row = {"epoch": str(epoch)}
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.endswith("_step"):
                continue
            row[name.removesuffix("_epoch")] = f"{float(value):.8g}"
        rows = [r for r in self._rows() if int(r["epoch"]) < epoch] + [row]
        columns = ["epoch", *sorted({k for r in rows for k in r} - {"epoch"})]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


#: What Lightning reads when it resumes from a checkpoint written by :func:`make_trainer`.
_CHECKPOINT_ENTRIES = (
    "state_dict",
    "pytorch-lightning_version",
    "epoch",
    "global_step",
    "loops",
    "optimizer_states",
    "lr_schedulers",
    "callbacks",
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written atomically and loaded without arbitrary unpickling."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        try:
            with atomic_path(path) as tmp:  # a full disk leaves no half-written file behind
                torch.save(checkpoint, tmp)
        except BaseException as error:
            if is_disk_full(error):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from error
            raise

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at ``path`` (tensors and plain data only: nothing else is unpickled).

        :raises ValueError: one line naming the file, when it is refused or unreadable.
        """
        import pickle

        try:
            with warnings.catch_warnings():  # torch warns about the pickle protocol of some files
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ValueError(
                f"{path}: refused: this checkpoint holds objects other than tensors and plain "
                "data, which are never unpickled (for safety); move it away to start afresh"
            ) from None
        except Exception as error:  # truncated, corrupt, not a PyTorch file
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"{path}: not a readable checkpoint ({type(error).__name__}: {first}); move it "
                "away to start afresh"
            ) from None
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise ValueError(f"{path}: not a training checkpoint (it holds no state_dict)")
        missing = [key for key in _CHECKPOINT_ENTRIES if key not in checkpoint]
        if missing:
            raise ValueError(f"{path}: not a complete training checkpoint (it lacks {missing})")
        return checkpoint


#: The checkpoint entry holding the sha256 of the crystals (and labels) a run trains on.
DATA_DIGEST_KEY = "data_sha256"


def record_data_digest(checkpoint: dict[str, Any], digest: str | None) -> None:
    """Keep a run's data digest in a checkpoint it saves (``on_save_checkpoint``)."""
    if digest is not None:
        checkpoint[DATA_DIGEST_KEY] = digest


def check_resumed_data(
    checkpoint: dict[str, Any], digest: str | None, path: Any, parts: str
) -> None:
    """Refuse, in one line naming ``path``, to resume a checkpoint made on other data than the
    run's now (``digest``; ``parts``: what the digest covers, as the message says it).

    :raises ValueError: the digests differ (a checkpoint without one is not checked)."""
    stored = checkpoint.get(DATA_DIGEST_KEY)
    if stored is not None and digest is not None and stored != digest:
        raise ValueError(
            f"{path}: the data changed since this run started ({parts}): resuming would mix "
            "two datasets; give the data it started with, or start a new run"
        )


def check_resumed_state(module: torch.nn.Module, checkpoint: dict[str, Any], path: Any) -> None:
    """Refuse, in one line naming ``path``, a checkpoint whose weights do not fit ``module``
    (another run's settings, or an edited file); call it from ``on_load_checkpoint``.

    :raises ValueError: naming the first missing, unexpected or mis-shaped weight.
    """
    state = checkpoint.get("state_dict", {})
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} instead of {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape
    ]
    problems = [
        f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for what, names in (
            ("mis-shaped", mis_shaped),
            ("missing", missing),
            ("unexpected", unexpected),
        )
        if names
    ]
    if problems:
        raise ValueError(
            f"{path}: this checkpoint does not fit the run's model ({'; '.join(problems)}); "
            "resume with the settings it was made with, or move it away to start afresh"
        )


def record_execution(checkpoint: dict[str, Any], trainer: Any) -> None:
    """Note in ``checkpoint`` how many processes (devices) trained it, and at what precision;
    call it from ``on_save_checkpoint``."""
    checkpoint["world_size"] = int(getattr(trainer, "world_size", 1) or 1)
    checkpoint["precision"] = str(getattr(trainer, "precision", ""))


def execution_change(checkpoint: dict[str, Any], trainer: Any) -> str | None:
    """A warning when a run resumes on another number of devices than it trained on (its
    batch size is per device, so every later step averages over a different number of
    crystals), or at another precision (``16-mixed`` on a GPU, ``32-true`` on a CPU): the run
    no longer continues as it would have; ``None`` otherwise."""
    notes = []
    saved = checkpoint.get("world_size")
    now = int(getattr(trainer, "world_size", 1) or 1)
    if isinstance(saved, int) and saved != now:
        notes.append(
            f"trained on {saved} device(s), resumed on {now}: the batch size is per device, so "
            f"each step now averages {now}/{saved} times as many crystals (--devices {saved} "
            "continues exactly)"
        )
    precision, precision_now = checkpoint.get("precision"), str(getattr(trainer, "precision", ""))
    if isinstance(precision, str) and precision and precision != precision_now:
        notes.append(
            f"trained at precision {precision}, resumed at {precision_now} (--precision "
            f"{precision} continues exactly)"
        )
    if not notes:
        return None
    return f"warning: {trainer.ckpt_path}: {'; '.join(notes)}; the run does not continue exactly"


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for lack of space, including PyTorch's way of
    saying it (``RuntimeError: ... unexpected pos ...`` / ``file write failed``)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text
        for marker in ("unexpected pos", "PytorchStreamWriter failed", "file write failed")
    )


def resolve_precision(accelerator: str, precision: str | None) -> str:
    """Mixed precision on GPU unless told otherwise; full precision on CPU."""
    if precision:
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "16-mixed" if on_gpu else "32-true"


def training_strategy(accelerator: str, devices: str | int, unused_parameters: bool) -> Any:
    """Lightning's strategy: data-parallel (DDP) on several accelerator devices, looking for
    parameters without a gradient when ``unused_parameters``; otherwise Lightning's choice."""
    if devices in ("auto", 1, "1") or accelerator == "cpu":
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=True) if unused_parameters else "ddp"


def make_trainer(
    out: Path,
    *,
    epochs: int,
    monitor: str,
    mode: str = "min",
    accelerator: str = "auto",
    devices: str | int = "auto",
    precision: str | None = None,
    progress: bool = True,
    callbacks: list[Any] | None = None,
    log_every_n_steps: int = 20,
    unused_parameters: bool = False,
) -> L.Trainer:
    """A trainer writing ``history.csv`` (per-epoch metrics) and TensorBoard logs,
    ``checkpoints/last.ckpt`` every epoch and ``checkpoints/best.ckpt`` for the best ``monitor``.

    :param unused_parameters: some parameters get no gradient in a step (e.g. the projector when
        only atom-level objectives train): data-parallel runs must look for them."""
    quiet_lightning()
    best = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )
    # A separate unmonitored callback: Lightning's ``save_last`` only rewrites last.ckpt in an
    # epoch where the monitored metric improved, so a resume could go back several epochs.
    last = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="last",
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=training_strategy(accelerator, devices, unused_parameters),
        precision=resolve_precision(accelerator, precision),  # type: ignore[arg-type]
        logger=TensorBoardLogger(out, name="tensorboard", version=""),
        callbacks=[
            best,
            last,
            Timer(verbose=False),  # its state is checkpointed: resumed runs add up their time
            EpochHistory(out / "history.csv"),
            *(callbacks or []),
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        log_every_n_steps=log_every_n_steps,
        use_distributed_sampler=False,  # EpochSampler shards by rank itself
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True if not torch.cuda.is_available() else "warn",
    )
    keep_freed_memory()
    # Deterministic mode also fills every new uninitialised tensor with NaN, a full write of each
    # scratch buffer: a third of a CPU fine-tuning step. Every kernel here writes all of what it
    # allocates (seeded runs still reproduce exactly: tests/training), so the fill is not needed.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return trainer


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse (no trimming, large blocks from the
    heap) instead of returning it to the system: every CPU training step allocates the same
    large per-edge buffers, and a fresh mapping costs a page fault per 4 KiB on first touch (a
    quarter of a fine-tuning step on this project's VM: docs/benchmarks.md). The process keeps
    its peak memory instead of shrinking between steps. Off with ``CRYSTALTWINS_TUNE_MALLOC=0``;
    a no-op without glibc. Returns whether the setting took effect."""
    if os.environ.get("CRYSTALTWINS_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return bool(
        mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest
        and mallopt(m_trim_threshold, 2**30)
        and mallopt(m_top_pad, 64 * 1024 * 1024)
    )


#: Devices where ``torch.optim.Adam(fused=True)`` runs (one kernel for all parameters).
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(params: Any, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam (no amsgrad) as training uses it: the fused implementation where every parameter is
    on a device that has it, else the ``foreach`` one. Same update; one step over a CGCNN with a
    head (97k parameters in 26 tensors) took 0.45 ms instead of 1.16 ms on one CPU thread
    (``benchmarks/bench_optimizer.py``, ``docs/benchmarks.md``).

    :param params: parameters, or parameter groups (dicts with ``params`` and options).
    """
    groups = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in FUSED_ADAM_DEVICES for p in tensors)
    return torch.optim.Adam(
        groups,
        lr=lr,
        weight_decay=weight_decay,
        **({"fused": True} if fused else {"foreach": True}),
    )


def resident_device(accelerator: str, mode: str, store: Any) -> torch.device | None:
    """The CUDA device to keep a run's training data on, or ``None`` to stream it from the
    memory-mapped cache.

    :param mode: ``"auto"``: on a CUDA run, when the arrays batches are made of take at most
        half the device's free memory (:func:`~crystaltwins.data.gather.resident_fits`);
        ``"never"``: always stream. CPU runs always read the cache in place.
    """
    from crystaltwins.data.gather import resident_fits

    if mode not in ("auto", "never"):
        raise ValueError(f"data_on_device must be 'auto' or 'never', got {mode!r}")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if mode == "never" or not on_gpu or not torch.cuda.is_available():
        return None
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device if resident_fits(store, device) else None


def training_seconds(trainer: L.Trainer) -> float:
    """Seconds spent in ``fit`` (validation included), summed over every resume of the run."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, Timer):
            return float(callback.time_elapsed("train"))
    raise ValueError("the trainer has no Timer callback (build it with make_trainer)")


def resume_path(out: Path, resume: bool, log: Any = main_print) -> Path | None:
    """``checkpoints/last.ckpt`` when resuming and it exists (saying which epoch the run
    continues from, or what happens otherwise)."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and last.exists():
        if log is not None:
            epochs = epochs_done(last)
            done = f"after epoch {epochs}" if epochs is not None else "from its last checkpoint"
            log(f"{out}: resuming the run {done} ({last})")
        return last
    if log is not None:
        if resume:
            log(f"{out}: no checkpoint to resume from ({last}); starting from the first epoch")
        elif last.exists() or (out / "model.pt").exists():
            log(f"{out}: holds an earlier run, which this one replaces (--resume continues it)")
    return None


class _InterruptSeen(Callback):
    """Remembers that Lightning caught a Ctrl-C (it then calls ``sys.exit(1)``)."""

    interrupted = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted = True


def fit(trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
    """``trainer.fit``, except that a Ctrl-C raises ``KeyboardInterrupt`` (after Lightning's
    clean shutdown) instead of a silent ``sys.exit(1)``: the caller can say how to resume."""
    import signal

    seen = _InterruptSeen()
    trainer.callbacks.append(seen)  # type: ignore[attr-defined]
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if not seen.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores it now
        raise KeyboardInterrupt from None
    finally:
        trainer.callbacks.remove(seen)  # type: ignore[attr-defined]


def write_config(out: Path, config: Any) -> Path:
    """The resolved config as ``config.yaml`` in the run directory, with the folder the command
    runs in (:data:`~crystaltwins.training.run_folder.WORKING_DIR_KEY`)."""
    out.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    data = with_working_dir(json.loads(json.dumps(data, default=str)))
    text = yaml.safe_dump(data, sort_keys=False)
    return write_text_atomic(out / "config.yaml", text)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML file (keys are the flag names, with ``_`` or ``-``)."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(
            f"{path}: not valid YAML{line}; give one 'setting: value' per line"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def new_encoder(
    featurizer: Any,
    settings: Any,
    atom_fea_len: int | None = None,
    n_conv: int | None = None,
    h_fea_len: int | None = None,
    name: str | None = None,
) -> Any:
    """A freshly initialised encoder for a featurizer and graph settings.

    :param name: a registered encoder (:data:`~crystaltwins.models.registry.ENCODERS`; default
        :data:`~crystaltwins.training.configs.DEFAULT_ENCODER`). It gets the graph settings'
        Gaussian expansion when its constructor takes ``gaussian``.
    :param atom_fea_len: / :param n_conv: / :param h_fea_len: sizes asked for (``None``: the
        encoder's own default).
    :raises ValueError: an unknown name, or a size the encoder does not take.
    """
    import inspect

    from crystaltwins.models.registry import ENCODERS, lookup
    from crystaltwins.training.configs import DEFAULT_ENCODER

    name = name or DEFAULT_ENCODER
    cls = lookup(ENCODERS, "encoder", name)
    accepted = inspect.signature(cls).parameters
    sizes = {"atom_fea_len": atom_fea_len, "n_conv": n_conv, "h_fea_len": h_fea_len}
    kwargs: dict[str, Any] = {k: v for k, v in sizes.items() if v is not None}
    refused = sorted(set(kwargs) - set(accepted))
    if refused:
        takes = [k for k in accepted if k not in ("atom_features", "gaussian")]
        raise ValueError(
            f"encoder {name!r} takes no {', '.join(refused)} (its settings: {', '.join(takes)})"
        )
    if "gaussian" in accepted:
        kwargs["gaussian"] = {
            "dmin": settings.gaussian_dmin,
            "dmax": settings.gaussian_dmax,
            "step": settings.gaussian_step,
            "var": settings.gaussian_width,
        }
    return cls(torch.tensor(featurizer.table), **kwargs)


def check_pretrained_encoder(config: RunOptions, encoder: torch.nn.Module, source: Any) -> None:
    """A pre-trained model brings its own encoder: asking for another one, or for other sizes,
    is an error (one line), as asking for other graph settings is."""
    from crystaltwins.models.registry import ENCODERS, name_of

    conflicts = config.encoder_conflicts(name_of(ENCODERS, "encoder", encoder))
    if conflicts:
        raise ValueError(
            f"{source}: the pre-trained model brings its own encoder; asked for "
            f"{', '.join(conflicts)}: leave --encoder / sizes out, or train from scratch"
        )
