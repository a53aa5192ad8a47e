"""Self-describing, safe model files (``model.pt``).

A model file is a ``torch.save``-d dict holding only tensors, numbers, strings, lists and dicts,
so it loads with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling). Beside the
weights it stores everything needed to rebuild the model and its featurization: the encoder and
each head as ``{type, version, init_args, state}`` (``type`` a name registered in
:mod:`crystaltwins.models.registry`: no class is ever imported by path), the element-feature
table, the graph settings, and for a fine-tuned model the target (name, column, unit, transform,
standardisation, task) in ``info``. Files of format 1 (earlier versions) load too.

Published Crystal Twins ``.pth`` state dicts load too (:func:`load_model` detects them).

An ensemble (``finetune --ensemble K``) is one file too: ``kind`` ``"ensemble"``, its ``members``
the K fine-tuned models' own entries, each checked like a model file before anything is built;
:func:`load_predictor` loads it (and any single model), :func:`load_model` only single models.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.io.atomic import atomic_path
from crystaltwins.models.file_check import (
    ENSEMBLE_KIND,
    check_ensemble_payload,
    check_model_payload,
)
from crystaltwins.models.heads import SimSiamPredictor
from crystaltwins.models.property_model import PropertyModel, Target
from crystaltwins.models.registry import ENCODERS, HEADS, describe

MODEL_FORMAT = "crystaltwins-model"
MODEL_FORMAT_VERSION = 2


@dataclass
class ModelBundle:
    """An encoder, its head and what they need to see a crystal the way they were trained.

    :param encoder: a registered encoder (:data:`~crystaltwins.models.registry.ENCODERS`).
    :param kind: ``"pretrained"`` (head = projector, may be ``None``) or ``"finetuned"``
        (head = property head).
    :param info: provenance and task description: objective, augmentations, data sources,
        targets, target_column, unit, ``target_mean``/``target_std`` (standardisation),
        ``target_transform``, task; ``aux_targets`` (column, mean, std) of a head with more
        outputs (multi-task training); the hashed ids of the labelled crystals.
    :param predictor: a pre-trained model's SimSiam predictor (applied to the projections).
    """

    encoder: nn.Module
    head: nn.Module | None
    kind: str
    featurizer: AtomFeaturizer
    graph_settings: GraphSettings
    info: dict[str, Any] = field(default_factory=dict)
    predictor: nn.Module | None = None

    def property_model(self) -> PropertyModel:
        """The fine-tuned model as a :class:`PropertyModel` (whose conversions give predictions
        in the target's units).

        :raises ValueError: for a pre-trained encoder, which has no property head.
        """
        if self.kind != "finetuned" or self.head is None:
            raise ValueError(
                "a pre-trained encoder has no property head; fine-tune it first "
                "(crystaltwins finetune)"
            )
        return PropertyModel(self.encoder, self.head, Target.from_info(self.info))

    def heads(self) -> dict[str, nn.Module]:
        """The heads by role: ``property`` (fine-tuned) or ``projection`` and ``predictor``."""
        main = "property" if self.kind == "finetuned" else "projection"
        roles = {main: self.head, "predictor": self.predictor}
        return {role: head for role, head in roles.items() if head is not None}


@dataclass
class EnsembleBundle:
    """Fine-tuned models trained alike (other seeds, one split) whose predictions are averaged.

    :param members: the members, each a ``finetuned`` :class:`ModelBundle`.
    :param info: what fine-tuning recorded: targets, task, seeds, split seed, test metrics.
    """

    members: list[ModelBundle]
    info: dict[str, Any] = field(default_factory=dict)
    kind: str = ENSEMBLE_KIND


def save_model(path: str | os.PathLike, bundle: ModelBundle) -> Path:
    """Write ``bundle`` to ``path`` atomically (temporary file, then rename)."""
    return _save(Path(path), _payload(bundle))


def save_ensemble(path: str | os.PathLike, ensemble: EnsembleBundle) -> Path:
    """Write an ensemble of fine-tuned models to one file, atomically."""
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "kind": ENSEMBLE_KIND,
        "members": [_payload(member) for member in ensemble.members],
        "info": ensemble.info,
    }
    return _save(Path(path), payload)


def _save(path: Path, payload: dict[str, Any]) -> Path:
    # through a handle: the zip's inner folder is torch's fixed name, not the temporary's, so
    # saving the same model twice gives the same bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
    return path


def _payload(bundle: ModelBundle) -> dict[str, Any]:
    """The entries of ``bundle``'s model file (tensors on the CPU)."""
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "kind": bundle.kind,
        "encoder": describe(bundle.encoder, ENCODERS, "encoder"),
        "heads": {role: describe(h, HEADS, "head") for role, h in bundle.heads().items()},
        "featurizer": bundle.featurizer.state(),
        "graph_settings": bundle.graph_settings.to_dict(),
        "info": bundle.info,
    }


def _is_published_state_dict(payload: Any) -> bool:
    return isinstance(payload, dict) and "embedding.weight" in payload and "format" not in payload


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path`; a shipped model's name (``"default"``,
    ``"crystal-twins"``, ``"mp-eform"``, ``"mp-multi"``, ``"mp-multi-33k"``:
    :data:`~crystaltwins.models.pretrained.SHIPPED_NAMES`) is its file and a run folder (of
    ``pretrain`` or ``finetune``) stands for its ``model.pt``.

    :raises FileNotFoundError: naming the file when it does not exist, or the folder when it
        holds no ``model.pt``.
    """
    from crystaltwins.models.pretrained import SHIPPED_NAMES, shipped_model_path

    if str(path) in SHIPPED_NAMES:
        return shipped_model_path(str(path))
    path = Path(path)
    if path.is_dir():
        return _run_folder_model(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    return path


def _run_folder_model(folder: Path) -> Path:
    """``folder/model.pt``, or a FileNotFoundError saying why a folder has none."""
    model = folder / "model.pt"
    if model.is_file():
        return model
    if (folder / "checkpoints" / "last.ckpt").is_file():
        raise FileNotFoundError(
            f"{folder}: the run has no model.pt yet (it stopped before the end); finish it with "
            "--resume, or give a model file"
        )
    raise FileNotFoundError(
        f"{folder}: a folder without model.pt; give a run folder of pretrain or finetune, or a "
        "model file"
    )


def load_model(path: str | os.PathLike, atom_init: str | os.PathLike | None = None) -> ModelBundle:
    """Load a model file written by :func:`save_model`, or a published Crystal Twins ``.pth``.

    :param path: the file, a run folder holding ``model.pt``, or the name of a model shipped
        with the package: ``"default"`` (the best start measured, ``"mp-multi-33k"``),
        ``"crystal-twins"`` (the Crystal Twins encoder), ``"mp-eform"`` (the formation-energy
        model used for supervised transfer), ``"mp-multi"`` (its multi-task sibling) or
        ``"mp-multi-33k"`` (the same on 3x the crystals); see ``docs/model_card.md``.
    :param atom_init: for a published ``.pth``: the ``atom_init.json`` it was trained with; by
        default the one in the same folder.
    :raises ValueError: a file that is neither, or whose contents disagree with its weights,
        naming the file and the problem on one line.
    """
    path = resolve_model_path(path)
    payload = _read(path)
    if _is_ensemble(payload):
        raise ValueError(
            f"{path}: an ensemble of {len(payload['members'])} fine-tuned models, usable with "
            f"predict; here give one model, e.g. one member's run folder {path.parent / 'members' / '0'}"
        )
    return _bundle(path, payload, atom_init)


def load_predictor(
    path: str | os.PathLike, atom_init: str | os.PathLike | None = None
) -> ModelBundle | EnsembleBundle:
    """:func:`load_model`, or the :class:`EnsembleBundle` of an ensemble's file (every member
    checked before any is built)."""
    path = resolve_model_path(path)
    payload = _read(path)
    if not _is_ensemble(payload):
        return _bundle(path, payload, atom_init)
    checked = check_ensemble_payload(path, payload, MODEL_FORMAT_VERSION)
    members = [_build(path, *member) for member in checked]
    return EnsembleBundle(members, dict(payload["info"]))


def _is_ensemble(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and payload.get("format") == MODEL_FORMAT
        and payload.get("kind") == ENSEMBLE_KIND
        and isinstance(payload.get("members"), list)
    )


def _read(path: Path) -> Any:
    """``torch.load`` of a model file, never unpickling anything but tensors and plain data."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of some files
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, corrupt, or holding arbitrary objects
        if isinstance(error, pickle.UnpicklingError):
            reason = "not a PyTorch file of tensors (other files are never unpickled, for safety)"
        else:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise ValueError(
            f"{path}: not a crystaltwins model file nor a Crystal Twins state dict ({reason})"
        ) from None


def _bundle(path: Path, payload: Any, atom_init: str | os.PathLike | None) -> ModelBundle:
    """The model of a loaded file's ``payload``, checked before it is built."""
    if _is_published_state_dict(payload):
        return _load_published(path, atom_init)
    if isinstance(payload, dict) and "pytorch-lightning_version" in payload:
        raise ValueError(
            f"{path}: a training checkpoint (for --resume), not a model file; give the run's "
            "model.pt or its folder"
        )
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a crystaltwins model file nor a Crystal Twins state dict")
    # every size checked against the stored weights before anything is allocated
    return _build(path, *check_model_payload(path, payload, MODEL_FORMAT_VERSION))


def _build(path: Path, featurizer: AtomFeaturizer, payload: dict[str, Any]) -> ModelBundle:
    """The model of a checked payload (format-2 layout), its classes looked up by name."""
    try:
        part = payload["encoder"]
        encoder = ENCODERS[part["type"]].from_config(  # type: ignore[attr-defined]
            part["init_args"], torch.tensor(featurizer.table), part["state"]
        )
        heads = {
            role: HEADS[h["type"]].from_config(h["init_args"], h["state"])  # type: ignore[attr-defined]
            for role, h in payload["heads"].items()
        }
        graph_settings = GraphSettings.from_dict(payload["graph_settings"])
    except (KeyError, RuntimeError, TypeError, ValueError) as error:  # what the checks missed
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"{path}: cannot rebuild the model ({type(error).__name__}: {first_line})"
        ) from None
    return ModelBundle(
        encoder=encoder,
        head=heads.get("property", heads.get("projection")),
        kind=payload["kind"],
        featurizer=featurizer,
        graph_settings=graph_settings,
        info=payload["info"],
        predictor=heads.get("predictor"),
    )


def _load_published(path: Path, atom_init: str | os.PathLike | None) -> ModelBundle:
    from crystaltwins.models.published import load_published_crystal_twins

    atom_init = Path(atom_init) if atom_init else path.parent / "atom_init.json"
    if not atom_init.exists():
        raise ValueError(
            f"{path}: a published Crystal Twins state dict needs the atom_init.json it was trained "
            f"with; none at {atom_init} (give it: --atom-init on the command line, "
            "crystaltwins.load_model(path, atom_init=...) in Python)"
        )
    featurizer = AtomFeaturizer.from_json(atom_init)
    encoder, head = load_published_crystal_twins(
        path, torch.tensor(featurizer.table), atom_init_path=atom_init
    )
    # Told apart by the weights, not the file name (a renamed file stays what it is): the
    # published SimSiam fc_head is its predictor (256 → 256), Barlow Twins' its projector
    # (128 → 256).
    square = head.in_dim == head.out_dim
    objective = "simsiam" if square or "simsiam" in path.name.lower() else "barlow_twins"
    predictor = None
    if objective == "simsiam":
        if not square:
            raise ValueError(
                f"{path}: a SimSiam fc_head must map {head.in_dim} features to as many, not "
                f"{head.out_dim}"
            )
        predictor = SimSiamPredictor(head.in_dim, head.hidden_dim)
        predictor.load_state_dict(head.state_dict(), strict=True)
    return ModelBundle(
        encoder=encoder,
        head=head if objective == "barlow_twins" else None,
        predictor=predictor,
        kind="pretrained",
        featurizer=featurizer,
        graph_settings=GraphSettings(),
        info={"source": str(path), "objective": objective, "published": True},
    )
