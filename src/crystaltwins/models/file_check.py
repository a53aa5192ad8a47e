"""Checks of a model file's contents against its stored weights, before anything is built.

A ``model.pt`` that loads with ``torch.load(weights_only=True)`` can still be wrong: damaged,
edited, written by another version, or forged (a config asking for a 12,000-wide encoder over
16-wide weights would allocate gigabytes before failing). :func:`check_model_payload` compares
every entry, config width and head size with the shapes of the tensors the file holds, so that
nothing is allocated beyond what those weights imply, and raises a one-line :class:`ValueError`
naming the file and the first problem found.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.published import _is_dense
from crystaltwins.models.targets import TRANSFORMS

#: Entries of a model file (format version 1), see :func:`crystaltwins.models.checkpoint.save_model`.
MODEL_ENTRIES = frozenset(
    {
        "format",
        "format_version",
        "kind",
        "encoder_config",
        "encoder_state",
        "head",
        "head_state",
        "featurizer",
        "graph_settings",
        "info",
    }
)
ENCODER_CONFIG_KEYS = frozenset({"atom_fea_len", "n_conv", "h_fea_len", "gaussian"})
GAUSSIAN_KEYS = frozenset({"dmin", "dmax", "step", "var"})
HEAD_KEYS = frozenset({"type", "in_dim", "hidden_dim", "out_dim"})
#: Head type allowed for each kind of model (``None``: no head).
HEADS_OF_KIND: dict[str, tuple[str | None, ...]] = {
    "pretrained": (None, "ProjectionHead"),
    "finetuned": ("PropertyHead",),
}
#: Entries of an ensemble's model file: its members are model files of kind ``finetuned``.
ENSEMBLE_ENTRIES = frozenset({"format", "format_version", "kind", "members", "info"})
ENSEMBLE_KIND = "ensemble"
#: Largest number of members accepted in an ensemble's model file.
MAX_MEMBERS = 1000
#: Settings every member of an ensemble must share (entries of ``info``).
_SHARED_MEMBER_INFO = ("task", "targets", "target_transform")
#: Largest number of Gaussian centres accepted when no convolution weights pin it down.
MAX_GAUSSIANS = 10_000

_CONV_KEY = re.compile(r"^convs\.(\d+)\.")
_CONV_PARTS: dict[str, str] = {  # parameter of a CGConv -> its shape (A atom, K edge features)
    "fc_full.weight": "2A,2A+K",
    "fc_full.bias": "2A",
    "bn1.weight": "2A",
    "bn1.bias": "2A",
    "bn1.running_mean": "2A",
    "bn1.running_var": "2A",
    "bn1.num_batches_tracked": "",
    "bn2.weight": "A",
    "bn2.bias": "A",
    "bn2.running_mean": "A",
    "bn2.running_var": "A",
    "bn2.num_batches_tracked": "",
}


class _Problem(ValueError):
    """One thing wrong with the file (the caller adds the file's name)."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _keys_problem(what: str, found: Any, expected: frozenset[str] | set[str]) -> None:
    if not isinstance(found, Mapping):
        raise _Problem(f"{what} is {type(found).__name__}, expected a dict")
    names = {k for k in found if isinstance(k, str)}
    if len(names) != len(found):
        raise _Problem(f"{what} has keys that are not strings")
    missing, unknown = sorted(expected - names), sorted(names - expected)
    if missing:
        raise _Problem(f"{what} lacks {', '.join(missing[:8])}")
    if unknown:
        shown = ", ".join(_short(k, 40) for k in unknown[:8])
        raise _Problem(f"{what} has unknown {'keys' if len(unknown) > 1 else 'key'} {shown}")


def _positive_int(what: str, value: Any, minimum: int = 1) -> int:
    if type(value) is not int or value < minimum:
        raise _Problem(f"{what} is {_short(value)}, expected an integer >= {minimum}")
    return value


def _real(what: str, value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Problem(f"{what} is {_short(value)}, expected a finite number")
    return float(value)


def _gaussian_count(gaussian: Mapping[str, Any]) -> int:
    """Number of Gaussian centres (``len(np.arange(dmin, dmax + step, step))``), unallocated."""
    dmin = _real("encoder_config.gaussian.dmin", gaussian["dmin"])
    dmax = _real("encoder_config.gaussian.dmax", gaussian["dmax"])
    step = _real("encoder_config.gaussian.step", gaussian["step"])
    if gaussian["var"] is not None and _real("encoder_config.gaussian.var", gaussian["var"]) <= 0:
        raise _Problem(f"encoder_config.gaussian.var is {gaussian['var']}, expected > 0")
    if step <= 0 or dmax - dmin <= step:
        raise _Problem(
            f"encoder_config.gaussian has dmin {dmin}, dmax {dmax}, step {step}: "
            "expected 0 < step < dmax - dmin"
        )
    count = math.ceil((dmax + step - dmin) / step)  # how np.arange counts
    if count > MAX_GAUSSIANS:
        raise _Problem(
            f"encoder_config.gaussian asks for {count} Gaussians (at most {MAX_GAUSSIANS})"
        )
    return count


def _check_tensors(
    what: str, state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """``state`` holds exactly the tensors of ``shapes``, finite, floating point except counters."""
    _keys_problem(what, state, set(shapes))
    for key, shape in shapes.items():
        tensor = state[key]
        if not isinstance(tensor, Tensor):
            raise _Problem(f"{what}[{key!r}] is {type(tensor).__name__}, expected a tensor")
        if tuple(tensor.shape) != shape:
            raise _Problem(
                f"{what}[{key!r}] has shape {tuple(tensor.shape)} but the config implies {shape}"
            )
        if not _is_dense(tensor):  # e.g. a stride-0 view: a huge shape over a few numbers
            raise _Problem(f"{what}[{key!r}] is not a dense tensor of the values it claims")
        if key.endswith("num_batches_tracked"):
            if tensor.dtype != torch.int64:
                raise _Problem(f"{what}[{key!r}] is {tensor.dtype}, expected int64")
        elif not tensor.dtype.is_floating_point:
            raise _Problem(f"{what}[{key!r}] is {tensor.dtype}, expected floating point")
        elif not bool(torch.isfinite(tensor).all()):
            raise _Problem(f"{what}[{key!r}] holds non-finite values")


def _encoder_shapes(
    config: Mapping[str, Any], state: Any, n_features: int
) -> dict[str, tuple[int, ...]]:
    """The tensor shapes the encoder config implies, checked against the stored convolutions
    first so that nothing is sized by the config alone."""
    _keys_problem("encoder_config", config, ENCODER_CONFIG_KEYS)
    _keys_problem("encoder_config.gaussian", config["gaussian"], GAUSSIAN_KEYS)
    a = _positive_int("encoder_config.atom_fea_len", config["atom_fea_len"])
    h = _positive_int("encoder_config.h_fea_len", config["h_fea_len"])
    n_conv = _positive_int("encoder_config.n_conv", config["n_conv"], minimum=0)
    k = _gaussian_count(config["gaussian"])
    if not isinstance(state, Mapping):
        raise _Problem(f"encoder_state is {type(state).__name__}, expected a dict")
    conv_ids = {
        int(m.group(1)) for key in state if isinstance(key, str) and (m := _CONV_KEY.match(key))
    }
    if n_conv != len(conv_ids):
        raise _Problem(
            f"encoder_config.n_conv is {n_conv} but encoder_state holds {len(conv_ids)} convolutions"
        )
    sizes = {"A": a, "2A": 2 * a, "2A+K": 2 * a + k}
    shapes: dict[str, tuple[int, ...]] = {
        "embedding.weight": (a, n_features),
        "embedding.bias": (a,),
        "conv_to_fc.weight": (h, a),
        "conv_to_fc.bias": (h,),
    }
    for n in range(n_conv):
        for part, dims in _CONV_PARTS.items():
            shapes[f"convs.{n}.{part}"] = tuple(sizes[d] for d in dims.split(",") if d)
    return shapes


def _check_head(kind: str, spec: Any, state: Any, h_fea_len: int) -> int | None:
    """The head's output width (``None`` without a head)."""
    if spec is None or state is None:
        if spec is not None or state is not None:
            raise _Problem("head and head_state must both be given or both be None")
        if None not in HEADS_OF_KIND[kind]:
            raise _Problem(f"a {kind} model needs a head")
        return None
    _keys_problem("head", spec, HEAD_KEYS)
    if spec["type"] not in HEADS_OF_KIND[kind]:
        allowed = [t for t in HEADS_OF_KIND[kind] if t]
        raise _Problem(f"head type {_short(spec['type'])} in a {kind} model (expected {allowed})")
    in_dim = _positive_int("head.in_dim", spec["in_dim"])
    hidden = _positive_int("head.hidden_dim", spec["hidden_dim"])
    out = _positive_int("head.out_dim", spec["out_dim"])
    if in_dim != h_fea_len:
        raise _Problem(f"head.in_dim is {in_dim} but the encoder's h_fea_len is {h_fea_len}")
    shapes = {
        "0.weight": (hidden, in_dim),
        "0.bias": (hidden,),
        "2.weight": (out, hidden),
        "2.bias": (out,),
    }
    _check_tensors("head_state", state, shapes)
    return out


def _check_info(kind: str, info: Any, head_out: int | None) -> None:
    if not isinstance(info, Mapping):
        raise _Problem(f"info is {type(info).__name__}, expected a dict")
    if kind != "finetuned":
        return
    task = info.get("task", "regression")
    if task == "classification":
        if head_out != 2:
            raise _Problem(f"a classifier needs a head with 2 outputs, this one has {head_out}")
        return
    if task != "regression":
        raise _Problem(f"info.task is {_short(task)}, expected 'regression' or 'classification'")
    for key in ("target_mean", "target_std"):
        if key not in info:
            raise _Problem(f"info lacks {key}")
        _real(f"info.{key}", info[key])
    if info["target_std"] <= 0:
        raise _Problem(f"info.target_std is {info['target_std']}, expected > 0")
    transform = info.get("target_transform", "none")
    if transform not in TRANSFORMS:
        raise _Problem(
            f"info.target_transform is {_short(transform)}, expected one of {sorted(TRANSFORMS)}"
        )


def _check_graph_settings(state: Any) -> None:
    _keys_problem("graph_settings", state, {f.name for f in fields(GraphSettings)})
    for name, value in state.items():
        _real(f"graph_settings.{name}", value)
    try:
        GraphSettings.from_dict(dict(state))
    except (TypeError, ValueError) as error:
        raise _Problem(f"graph_settings: {error}") from None


def check_model_payload(path: Path, payload: Mapping[str, Any], version: int) -> AtomFeaturizer:
    """Check a loaded model file (a dict whose ``format`` is crystaltwins') before building it.

    :param path: the file, for the messages.
    :param payload: what ``torch.load(path, weights_only=True)`` returned.
    :param version: the newest format version this crystaltwins reads.
    :returns: the element featurizer stored in the file.
    :raises ValueError: ``"<path>: <problem>"`` on one line, for the first problem found.
    """
    try:
        return _check(payload, version)
    except _Problem as problem:
        raise ValueError(f"{path}: not a usable crystaltwins model file: {problem}") from None


def check_ensemble_payload(
    path: Path, payload: Mapping[str, Any], version: int
) -> list[AtomFeaturizer]:
    """Check a loaded ensemble file (``kind`` ``"ensemble"``): its entries, then every member as
    :func:`check_model_payload` checks a model file, then that the members predict the same
    target (task, targets, transform) from the same graphs.

    :returns: each member's element featurizer.
    :raises ValueError: ``"<path>: <problem>"`` on one line (``members[k]: ...`` for a member).
    """
    try:
        _check_version(payload, version)
        _keys_problem("the file", payload, ENSEMBLE_ENTRIES)
        members = payload["members"]
        if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
            count = len(members) if isinstance(members, list) else type(members).__name__
            raise _Problem(f"members is {count}, expected a list of 2..{MAX_MEMBERS} model files")
        if not isinstance(payload["info"], Mapping):
            raise _Problem(f"info is {type(payload['info']).__name__}, expected a dict")
        featurizers = []
        for k, member in enumerate(members):
            try:
                if not isinstance(member, Mapping):
                    raise _Problem(f"a {type(member).__name__}, expected a model file's dict")
                if member.get("format") != payload["format"] or member.get("kind") != "finetuned":
                    raise _Problem("not a fine-tuned crystaltwins model")
                featurizers.append(_check(member, version))
            except _Problem as problem:
                raise _Problem(f"members[{k}]: {problem}") from None
        first = members[0]
        for k, member in enumerate(members[1:], start=1):
            for key in _SHARED_MEMBER_INFO:
                if member["info"].get(key) != first["info"].get(key):
                    raise _Problem(
                        f"members[{k}] has info.{key} {_short(member['info'].get(key))}, "
                        f"members[0] {_short(first['info'].get(key))}"
                    )
            if dict(member["graph_settings"]) != dict(first["graph_settings"]):
                raise _Problem(f"members[{k}] has other graph_settings than members[0]")
        return featurizers
    except _Problem as problem:
        raise ValueError(f"{path}: not a usable crystaltwins model file: {problem}") from None


def _check_version(payload: Mapping[str, Any], version: int) -> None:
    found = payload.get("format_version")
    if type(found) is int and found > version:
        raise _Problem(
            f"model format {found} is newer than this crystaltwins reads ({version}); upgrade it"
        )
    if type(found) is not int or found < 1:
        raise _Problem(f"format_version is {_short(found)}, expected an integer 1..{version}")


def _check(payload: Mapping[str, Any], version: int) -> AtomFeaturizer:
    _check_version(payload, version)
    _keys_problem("the file", payload, MODEL_ENTRIES)
    kind = payload["kind"]
    if kind not in HEADS_OF_KIND:
        raise _Problem(f"kind is {_short(kind)}, expected one of {sorted(HEADS_OF_KIND)}")
    if not isinstance(payload["featurizer"], Mapping):
        raise _Problem("featurizer is not a dict")
    try:
        featurizer = AtomFeaturizer.from_state(dict(payload["featurizer"]))
    except (TypeError, ValueError) as error:
        raise _Problem(str(error).splitlines()[0] if str(error) else "invalid featurizer") from None
    config, state = payload["encoder_config"], payload["encoder_state"]
    _check_tensors("encoder_state", state, _encoder_shapes(config, state, featurizer.num_features))
    head_out = _check_head(kind, payload["head"], payload["head_state"], config["h_fea_len"])
    _check_graph_settings(payload["graph_settings"])
    _check_info(kind, payload["info"], head_out)
    return featurizer
