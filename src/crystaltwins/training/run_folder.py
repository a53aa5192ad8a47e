"""Run folders: one run at a time, never a user's files removed, resumes only of the same run.

A run folder (``--out`` of ``pretrain`` / ``finetune``, or a ``bench`` results folder) is
claimed before anything is written:

- it is locked for the whole run (a second run into it stops with a message);
- a folder that already holds files is refused unless the run resumes (``resume``) or starts
  clean (``overwrite``); files count as a run's only in a folder holding the lock file every
  run leaves (``.crystaltwins.lock``), so a user's ``config.yaml`` or ``history.csv`` is never
  taken for a run's;
- ``overwrite`` removes only the files crystaltwins writes in a run folder, and is refused
  when the folder holds anything else;
- ``resume`` is refused when the stored ``config.yaml`` describes another run (other data,
  target, method or model settings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from crystaltwins.io.locks import FileLock

#: The lock file of a run folder (kept: an unlocked file is harmless).
LOCK_NAME = ".crystaltwins.lock"
#: A fine-tuning run's list of its validation and test crystals whose labels its starting model
#: learned (``finetune.check_seen_by_start``).
SEEN_BY_START_NAME = "seen_by_starting_model.csv"
#: The list of crystals a pre-training run leaves out, put in its folder by ``bench``.
EXCLUDED_IDS_FILE = "excluded_test_ids.json"

#: What ``pretrain`` and ``finetune`` write in a run folder.
RUN_FILES = frozenset(
    {
        "config.yaml",
        "history.csv",
        "checkpoints",
        "tensorboard",
        "lightning_logs",
        "model.pt",
        "metrics.json",
        "test_predictions.csv",
        "invalid_targets.csv",
        SEEN_BY_START_NAME,
        "parity.png",
        "learning_curves.png",
        EXCLUDED_IDS_FILE,
        "members",  # an ensemble's members (finetune --ensemble), each a run folder
        "member_predictions.npz",  # an ensemble member's predictions of every split
        LOCK_NAME,
    }
)

#: Settings that may change when a run is resumed: how it executes, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "overwrite",
        "out",
        "progress",
        "epochs",
        "cache_root",
        "featurize_workers",
        "loader_workers",
        "accelerator",
        "devices",
        "plots",
        "data_on_device",
        "members_together",
    }
)

#: Settings added with a default that changed what a run computes: a run written before the
#: setting existed did this (so its resume or reuse with the new default is refused).
BEHAVIOUR_BEFORE_SETTING: dict[str, Any] = {
    "barlow_l2_normalize": False,
    "perturbation_min": None,
    "edge_mask_per": "crystal",
}


def _acted_on(name: str, stored: dict[str, Any]) -> bool:
    """Whether the setting ``name`` of :data:`BEHAVIOUR_BEFORE_SETTING` changes what the stored
    run computes (Barlow Twins' normalisation a run without Barlow Twins does not)."""
    if name == "barlow_l2_normalize":
        return "barlow_twins" in str(stored.get("objective", "barlow_twins"))
    augment = [a.strip() for a in str(stored.get("augment", "rp,am,em")).split(",")]
    return ("rp" if name == "perturbation_min" else "em") in augment


#: Settings naming files: equal when they name the same file.
_PATH_SETTINGS = frozenset(
    {"data", "pretrained", "init_from", "atom_init", "split_files", "exclude_ids_file"}
)


#: The key of a run's ``config.yaml`` that records the folder its command ran in: its relative
#: paths are read from there too (a resume from another folder is the same run), and from the
#: folder a command runs in (a moved project resumes as before). Not a setting.
WORKING_DIR_KEY = "working_dir"


def with_working_dir(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a config as plain data) with :data:`WORKING_DIR_KEY` added."""
    return {**settings, WORKING_DIR_KEY: os.getcwd()}


#: Settings naming a model file: the same model when the two files hold the same bytes (a
#: shipped model's path changes with the installation that holds it).
_MODEL_FILE_SETTINGS = frozenset({"pretrained", "init_from"})


def _same_file_content(first: str, second: str) -> bool:
    """Whether two existing regular files hold the same bytes (size first, then SHA-256)."""
    paths = [Path(first), Path(second)]
    if not all(p.is_file() for p in paths) or len({p.stat().st_size for p in paths}) != 1:
        return False

    def digest(path: Path) -> str:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        return sha.hexdigest()

    return digest(paths[0]) == digest(paths[1])


#: The names :func:`crystaltwins.io.atomic.temporary_path` makes: ``.<stem>.tmp-<pid>-<8 hex>...``.
_TEMPORARY_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}")


def _is_temporary(name: str) -> bool:
    """A temporary file of one of our atomic writes (a user's ``notes.tmp`` is not one)."""
    return _TEMPORARY_NAME.match(name) is not None


def _being_written(name: str) -> bool:
    """A temporary that another live process may still be writing (e.g. ``predict --out
    RUN/x.csv`` beside a run's ``--overwrite``): its pid runs and is not this process's.
    A pid reused by an unrelated process keeps a stale temporary; never the reverse."""
    match = _TEMPORARY_NAME.match(name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or unknown: kept
        return True
    return True


def _unknown_entries(out: Path, known: frozenset[str]) -> list[str]:
    """Entries of ``out`` crystaltwins did not write, including files a user put inside the
    folders it writes in a run folder (``checkpoints/``, ``tensorboard/``, ``members/K/``)."""
    found = []
    for path in out.iterdir():
        if _is_temporary(path.name):
            continue
        if path.name not in known:
            found.append(path.name)
        elif known is RUN_FILES and path.is_dir():
            found += [f"{path.name}/{name}" for name in _unknown_inside(path)]
    return sorted(found)


def _unknown_inside(folder: Path) -> list[str]:
    """Entries of a run folder's own subfolder ``folder`` that crystaltwins did not write."""
    if folder.name == "members":  # ensemble members: run folders named 0, 1, ...
        found = []
        for member in folder.iterdir():
            if member.is_dir() and member.name.isdigit():
                found += [f"{member.name}/{name}" for name in _unknown_entries(member, RUN_FILES)]
            elif not _is_temporary(member.name):
                found.append(member.name)
        return found
    if folder.name == "lightning_logs":  # Lightning's own logs: version_N/ of its files
        found = []
        for version in folder.iterdir():
            if not (version.is_dir() and re.fullmatch(r"version_\d+", version.name)):
                found.append(version.name)
                continue
            found += [
                f"{version.name}/{p.name}"
                for p in version.iterdir()
                if not (
                    p.name.startswith("events.out.tfevents.")
                    or p.name in ("hparams.yaml", "metrics.csv")
                    or _is_temporary(p.name)
                )
            ]
        return found
    if folder.name == "checkpoints":
        ours = lambda name: name in ("best.ckpt", "last.ckpt")  # noqa: E731
    elif folder.name == "tensorboard":
        ours = lambda name: name.startswith("events.out.tfevents.") or name == "hparams.yaml"  # noqa: E731
    else:
        return []
    return [p.name for p in folder.iterdir() if not (ours(p.name) or _is_temporary(p.name))]


def _tool_entries(out: Path, known: frozenset[str]) -> list[Path]:
    """What crystaltwins wrote in ``out`` (but its lock file): what ``--overwrite`` removes;
    temporaries only when no live process may still be writing them."""
    return sorted(
        p
        for p in out.iterdir()
        if (p.name in known or (_is_temporary(p.name) and not _being_written(p.name)))
        and p.name != LOCK_NAME
    )


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def _normalised(config: Any) -> dict[str, Any]:
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(data, default=str))


def _defaults(config: Any) -> dict[str, Any]:
    """The default of each setting of a dataclass ``config`` (those that have one, a plain
    default or a factory's, e.g. an empty list)."""
    if not dataclasses.is_dataclass(config):
        return {}
    found = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return json.loads(json.dumps(found, default=str))


def _unset_means(name: str) -> Any:
    """What a setting left unset (``None``: "a pre-trained model's, a graph cache's or the
    encoder's own") comes to by default, for the settings runs written before it could be unset
    stored explicitly (``radius: 8.0``, ``atom_fea_len: 64``, ...); ``None`` for the others."""
    import inspect

    from crystaltwins.graph.settings import GraphSettings
    from crystaltwins.training.configs import DEFAULT_ENCODER, ENCODER_SIZES

    if name in ("radius", "max_neighbors"):
        return getattr(GraphSettings(), name)
    if name == "encoder":
        return DEFAULT_ENCODER
    if name in ENCODER_SIZES:
        from crystaltwins.models.registry import ENCODERS

        parameter = inspect.signature(ENCODERS[DEFAULT_ENCODER]).parameters.get(name)
        return None if parameter is None else parameter.default
    return None


def _shipped_as_path(value: Any, stored: bool) -> Any:
    """A shipped model's name (in a run's stored settings: what it meant when written, see
    :func:`~crystaltwins.models.pretrained.recorded_model_name`) as its file's path, so that a
    name and the file, or two names of one model, compare equal; anything else as it is."""
    from crystaltwins.models.pretrained import (
        SHIPPED_MODELS,
        canonical_model_name,
        recorded_model_name,
        shipped_model_path,
    )

    if not isinstance(value, str):
        return value
    name = recorded_model_name(value) if stored else canonical_model_name(value)
    if name not in SHIPPED_MODELS:
        return value
    try:
        return str(shipped_model_path(name))
    except FileNotFoundError:  # an installation without the file: compare the names
        return name


def _same_setting(name: str, stored: Any, wanted: Any, base: str | None = None) -> bool:
    """Whether a run's stored setting and the one asked for now mean the same; ``base``: the
    folder the stored run's command ran in (its relative paths are read from there too)."""
    if name in _MODEL_FILE_SETTINGS:
        stored, wanted = _shipped_as_path(stored, True), _shipped_as_path(wanted, False)
    if stored == wanted:
        return True
    if wanted is None and stored is not None and stored == _unset_means(name):
        return True  # written explicitly by an earlier version, left unset now: the same run
    if name not in _PATH_SETTINGS or stored is None or wanted is None:
        return False

    def resolved(value: Any, folder: str | None = None) -> Any:
        if isinstance(value, list):
            return [resolved(v, folder) for v in value]
        return os.path.realpath(os.path.join(folder or "", str(value)))

    if resolved(stored) == resolved(wanted):
        return True
    if isinstance(base, str) and resolved(stored, base) == resolved(wanted):
        return True
    if name in _MODEL_FILE_SETTINGS and isinstance(stored, str) and isinstance(wanted, str):
        return _same_file_content(stored, wanted)
    return False


#: Settings that do nothing when training from scratch (a new encoder learns at ``lr``).
INERT_FROM_SCRATCH = frozenset({"encoder_lr_factor"})


def config_differences(
    out: Path, config: Any, may_differ: frozenset[str] = RESUMABLE_CHANGES
) -> list[str]:
    """The settings of ``config`` that differ from the run stored in ``out/config.yaml``,
    as ``name: stored -> new`` (settings in ``may_differ`` may differ)."""
    path = out / "config.yaml"
    if not path.exists():
        return []
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path}: unreadable run settings ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); nothing was changed; "
            "restore the file, or give another --out"
        ) from None
    if not isinstance(stored, dict):
        raise ValueError(
            f"{path}: holds no run settings (a {type(stored).__name__}); nothing was changed; "
            "restore the file, or give another --out"
        )
    wanted = _normalised(config)
    defaults = _defaults(config)
    base = stored.pop(WORKING_DIR_KEY, None)
    differences = []
    for name in sorted(set(stored) | set(wanted)):
        if name in may_differ:
            continue
        if name not in stored and name in BEHAVIOUR_BEFORE_SETTING:
            old = BEHAVIOUR_BEFORE_SETTING[name]  # what the run did before the setting existed
            if _acted_on(name, stored) and not _same_setting(name, old, wanted.get(name)):
                differences.append(f"{name}: {old!r} (before the setting) -> {wanted.get(name)!r}")
            continue
        if name not in stored and name in defaults and defaults[name] == wanted.get(name):
            continue  # a setting added since that run was written, at its default
        if name in INERT_FROM_SCRATCH and stored.get("from_scratch") and wanted.get("from_scratch"):
            continue  # it does not act on a new encoder (e.g. a default changed since)
        old, new = stored.get(name), wanted.get(name)
        if not _same_setting(name, old, new, base) and not _same_in_effect(
            name, stored, wanted, base
        ):
            differences.append(f"{name}: {_stored_text(name, old)} -> {new!r}")
    return differences


def _same_in_effect(
    name: str, stored: dict[str, Any], wanted: dict[str, Any], base: str | None
) -> bool:
    """Whether a setting left unset in one of the two runs comes, in that run, to the value the
    other gives explicitly: ``--split-seed`` unset is ``--seed``; ``--radius`` /
    ``--max-neighbors`` unset are the graph cache's given as data, else the defaults (an
    explicit radius also ends the Gaussian expansion there, so the radius is the same only where
    the unset run's did too). Not for a run from a starting model, whose settings these are: the
    values must then be given as the run was started."""
    old, new = stored.get(name), wanted.get(name)
    if (old is None) == (new is None):
        return False
    unset_in, given = (stored, new) if old is None else (wanted, old)
    if name == "split_seed":
        return given == stored.get("seed") == wanted.get("seed")
    if name not in ("radius", "max_neighbors"):
        return False
    if unset_in.get("init_from") or (
        unset_in.get("pretrained") and not unset_in.get("from_scratch")
    ):
        # a starting model's: known only once the model is read, and a resume accepted here
        # rewrites config.yaml before the run compares the value with the model's
        return False
    from crystaltwins.graph.settings import GraphSettings
    from crystaltwins.training.common import cache_graph_settings

    data = unset_in.get("data")
    source = data[0] if isinstance(data, list) and data else data
    settings = None
    if isinstance(source, str):
        in_base = unset_in is stored and isinstance(base, str)
        folder = os.path.join(base, source) if in_base else source
        settings = cache_graph_settings(folder)
    settings = settings or GraphSettings()
    if name == "radius":
        return settings.radius == given and settings.gaussian_dmax == given
    return settings.max_neighbors == given


def _stored_text(name: str, value: Any) -> str:
    """A stored setting as a difference shows it: ``'default'`` of a model setting also says
    which model it named then."""
    from crystaltwins.models.pretrained import recorded_model_name

    if name in _MODEL_FILE_SETTINGS and isinstance(value, str):
        meant = recorded_model_name(value)
        if meant != value:
            return f"{value!r} (then the name of {meant!r})"
    return repr(value)


def _has_results(out: Path) -> bool:
    """Whether a run folder holds anything of value: a checkpoint, a model, metrics, a member
    that holds any of these, or a history of trained epochs (runs trained together keep no
    checkpoints)."""
    if any((out / "checkpoints").glob("*.ckpt")) or any(
        (out / name).exists() for name in ("model.pt", "metrics.json")
    ):
        return True
    members = out / "members"
    if members.is_dir() and any(_has_results(m) for m in members.iterdir() if m.is_dir()):
        return True
    try:
        with open(out / "history.csv") as handle:
            return len(list(itertools.islice(handle, 2))) > 1  # a header and an epoch
    except OSError:
        return False


def epochs_done(checkpoint: Path) -> int | None:
    """How many epochs a Lightning checkpoint has finished (``None`` if unreadable)."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]) + 1
    except Exception:
        return None


def _history_epochs(out: Path) -> int | None:
    """How many epochs a run's ``history.csv`` records (``None`` without one)."""
    import csv

    try:
        with open(out / "history.csv", newline="", encoding="utf-8") as handle:
            epochs = {row.get("epoch") for row in csv.DictReader(handle)}
    except (OSError, ValueError, csv.Error):
        return None
    return len(epochs - {None, ""})


def check_epochs_left(out: Path, config: Any) -> None:
    """Refuse to resume a run with fewer ``epochs`` than it has trained: by its last checkpoint,
    or, for runs trained together (which keep none), by its ``history.csv``."""
    epochs = getattr(config, "epochs", None)
    if epochs is None:
        return
    last = out / "checkpoints" / "last.ckpt"
    done = epochs_done(last) if last.exists() else _history_epochs(out)
    if done is not None and done > epochs:
        raise ValueError(
            f"{out}: --resume continues the run, which has trained {done} epochs, more than "
            f"the {epochs} asked for; nothing was changed; give --epochs {done} or more"
        )


def _inputs_inside(out: Path, config: Any) -> list[str]:
    """The settings of ``config`` naming a file or folder inside ``out`` (or ``out`` itself),
    as ``name PATH``: e.g. ``finetune --pretrained RUN --out RUN``, whose ``--overwrite``
    removed the model it was about to start from. A shipped model's name is no path."""
    from crystaltwins.models.pretrained import SHIPPED_NAMES

    folder = out.resolve()
    found = []
    for name in sorted(_PATH_SETTINGS):
        value = getattr(config, name, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(item, (str, os.PathLike)) or str(item) in SHIPPED_NAMES:
                continue
            path = Path(item).resolve()
            if name == "exclude_ids_file" and path == folder / EXCLUDED_IDS_FILE:
                continue  # written there for the run by bench, before it claims the folder
            if path == folder or folder in path.parents:
                found.append(f"{name} {item}")
    return found


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def check_run_folder(
    out: Path,
    config: Any,
    *,
    resume: bool,
    overwrite: bool,
    known: frozenset[str] = RUN_FILES,
    continues: bool = False,
    marked: bool = True,
) -> None:
    """Apply the rules of the module docstring to ``out`` (call it holding the folder's lock).

    :param continues: the folder's owner always continues what is there (``bench``): no refusal
        of a non-empty folder, and no config check here.
    :param marked: whether ``out`` held crystaltwins' lock file before this claim; in a folder
        without it, files with the names crystaltwins writes are the user's, not a run's.
    :raises ValueError: the folder cannot be used; nothing was changed.
    """
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    inside = _inputs_inside(out, config)
    if inside:
        raise ValueError(
            f"{out}: holds this command's own input ({_shown(inside)}), which the run would "
            "replace or remove; nothing was changed; give another --out"
        )
    entries = _unknown_entries(out, known)
    ours = _tool_entries(out, known)
    lost_lock = ""
    if not marked:
        if ours and not entries:
            lost_lock = (
                f" (if it is a crystaltwins run whose lock file was lost, e.g. by a copy without "
                f"hidden files, `touch {out / LOCK_NAME}` marks it as one again)"
            )
        entries = sorted({*entries, *(p.name for p in ours)})
        ours = []
    if overwrite:
        if entries:
            raise ValueError(
                f"{out}: --overwrite removes only crystaltwins' own files, and this folder also "
                f"holds {_shown(entries)}{lost_lock}; nothing was changed; give a new or empty "
                "folder"
            )
        _remove(ours)
        return
    if resume or continues:
        if entries and not ours:
            raise ValueError(
                f"{out}: holds files crystaltwins did not write ({_shown(entries)}){lost_lock} and "
                "no earlier run to continue; nothing was changed; give a new or empty folder"
            )
        if resume and not continues:
            differences = config_differences(out, config)
            if differences:
                raise ValueError(
                    f"{out}: --resume continues only the same run, and this folder holds a run "
                    f"with other settings ({'; '.join(differences)}); nothing was changed; "
                    "use another --out, or --overwrite to replace that run"
                )
            check_epochs_left(out, config)
        return
    if ours and not entries and known is RUN_FILES and not _has_results(out):
        _remove(ours)  # an earlier attempt that stopped before its first epoch: nothing to keep
        return
    if entries or ours:
        what = (
            "an earlier run"
            if ours
            else f"files crystaltwins did not write ({_shown(entries)}){lost_lock}"
        )
        hint = (
            "--resume continues it, --overwrite replaces it"
            if ours and not entries
            else "give a new or empty folder"
        )
        raise ValueError(f"{out}: holds {what}; nothing was changed; {hint}")


def claim_run_folder(
    out: str | os.PathLike,
    config: Any = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    known: frozenset[str] = RUN_FILES,
    continues: bool = False,
) -> FileLock:
    """Check that ``out`` may be used (:func:`check_run_folder`) and lock it; returns the held
    lock (released by ``release()``, or by the operating system when the process ends).

    :raises ValueError: the folder is in use by another run, or may not be used; nothing changed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; give a folder for the run")
    # A folder is a run's only when it holds the lock file a run leaves (else the files are
    # the user's, whatever their names).
    marked = (out / LOCK_NAME).exists()
    rules = {"resume": resume, "overwrite": overwrite, "known": known, "continues": continues}
    if out.is_dir() and (_unknown_entries(out, known) or (not marked and any(out.iterdir()))):
        # Refuse a user's folder before creating the lock file in it.
        check_run_folder(out, config, marked=marked, **rules)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK_NAME, str(out)).acquire(wait=False)
    try:
        check_run_folder(out, config, marked=marked, **rules)
    except BaseException:
        lock.release()
        raise
    return lock


@contextmanager
def claimed_run_folder(
    out: str | os.PathLike,
    config: Any = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    known: frozenset[str] = RUN_FILES,
    continues: bool = False,
    main_process: bool = True,
) -> Iterator[Path]:
    """:func:`claim_run_folder` for the duration of the ``with`` block.

    :param main_process: ``False`` in the extra processes of a multi-device run, which run
        inside the folder their main process claimed (nothing is checked or locked there).
    """
    if not main_process:
        yield Path(out)
        return
    created = not Path(out).exists()
    lock = claim_run_folder(
        out, config, resume=resume, overwrite=overwrite, known=known, continues=continues
    )
    try:
        yield Path(out)
    except Exception:
        removed = created and known is RUN_FILES and _empty_failed_start(Path(out))
        if removed:  # the lock file last, removed while held: nothing else was left
            lock.release_and_remove()
            with contextlib.suppress(OSError):
                Path(out).rmdir()
        lock.release()
        raise
    finally:
        lock.release()


def _empty_failed_start(out: Path) -> bool:
    """Empty the folder a run created when it holds nothing of value (the run failed before its
    first epoch: a wrong model name, unusable data, ...), so that a typo leaves no folder behind;
    called holding the folder's lock, which stays. Anything else in it (results, a file put there
    meanwhile) keeps the whole folder. Returns whether it was emptied."""
    if _has_results(out) or _unknown_entries(out, RUN_FILES):
        return False
    _remove(_tool_entries(out, RUN_FILES))
    return True


def claimed_folder_of(config: Any, main_process: bool = True) -> Any:
    """:func:`claimed_run_folder` of a run's config (its ``out``, ``resume`` and ``overwrite``)."""
    return claimed_run_folder(
        config.out,
        config,
        resume=config.resume,
        overwrite=config.overwrite,
        main_process=main_process,
    )
