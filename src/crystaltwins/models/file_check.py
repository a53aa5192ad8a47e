"""Checks of a model file's contents against its stored weights, before anything is built.

A ``model.pt`` that loads with ``torch.load(weights_only=True)`` can still be wrong: damaged,
edited, written by another version, or forged (init args asking for a 12,000-wide encoder over
16-wide weights would allocate gigabytes before failing). :func:`check_model_payload` compares
every entry, init arg and head width with the shapes of the tensors the file holds, so that
nothing is allocated beyond what those weights imply, and raises a one-line :class:`ValueError`
naming the file and the first problem found.

Format 2 (written now) stores the encoder and each head as ``{type, version, init_args,
state}``, ``type`` a name registered in :mod:`crystaltwins.models.registry`; format 1 (files of
earlier versions, the shipped default model among them) is read by :func:`upgrade_v1`, a pure
rearrangement of its entries, and then checked the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.cgcnn import gaussian_count
from crystaltwins.models.init_args import check_keys, real, short
from crystaltwins.models.property_model import (
    AUX_TARGETS_KEY,
    MAX_AUX_TARGETS,
    RESERVED_AUX_NAMES,
)
from crystaltwins.models.provenance import check_provenance
from crystaltwins.models.published import _is_dense
from crystaltwins.models.registry import ENCODERS, HEADS, lookup, on_meta_device
from crystaltwins.models.targets import TRANSFORMS

#: Entries of a model file (format version 2), see :func:`crystaltwins.models.checkpoint.save_model`.
MODEL_ENTRIES = frozenset(
    {"format", "format_version", "kind", "encoder", "heads", "featurizer", "graph_settings", "info"}
)
#: Entries of a format-1 model file.
V1_ENTRIES = frozenset(
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
#: Entries describing an encoder or a head.
PART_KEYS = frozenset({"type", "version", "init_args", "state"})
V1_HEAD_KEYS = frozenset({"type", "in_dim", "hidden_dim", "out_dim"})
#: Format-1 head class names → registered head names.
V1_HEAD_TYPES = {"ProjectionHead": "projection", "PropertyHead": "property"}
#: Heads (by role) each kind of model must have, and may have.
HEAD_ROLES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "pretrained": (frozenset(), frozenset({"projection", "predictor"})),
    "finetuned": (frozenset({"property"}), frozenset({"property"})),
}
#: Entries of an ensemble's model file: its members are model files of kind ``finetuned``.
ENSEMBLE_ENTRIES = frozenset({"format", "format_version", "kind", "members", "info"})
ENSEMBLE_KIND = "ensemble"
#: Largest number of members accepted in an ensemble's model file.
MAX_MEMBERS = 1000
#: Settings every member of an ensemble must share (entries of ``info``).
_SHARED_MEMBER_INFO = (
    "task",
    "targets",
    "target_transform",
    "target_column",
    "unit",
    AUX_TARGETS_KEY,
)


class _Problem(ValueError):
    """One thing wrong with the file (the caller adds the file's name)."""


def _keys_problem(what: str, found: Any, expected: frozenset[str] | set[str]) -> Mapping[str, Any]:
    try:
        return check_keys(what, found, expected)
    except ValueError as error:
        raise _Problem(str(error)) from None


def _check_tensors(
    what: str,
    state: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> None:
    """``state`` holds exactly the tensors of ``shapes``, dense and finite; floating point, or
    of the integer type in ``dtypes`` (default: int64 for BatchNorm's ``num_batches_tracked``)."""
    _keys_problem(what, state, set(shapes))
    for key, shape in shapes.items():
        tensor = state[key]
        if not isinstance(tensor, Tensor):
            raise _Problem(f"{what}[{key!r}] is {type(tensor).__name__}, expected a tensor")
        if tuple(tensor.shape) != shape:
            raise _Problem(
                f"{what}[{key!r}] has shape {tuple(tensor.shape)} but the init args imply {shape}"
            )
        if not _is_dense(tensor):  # e.g. a stride-0 view: a huge shape over a few numbers
            raise _Problem(f"{what}[{key!r}] is not a dense tensor of the values it claims")
        wanted = (dtypes or {}).get(key)
        if wanted is None and key.endswith("num_batches_tracked"):
            wanted = torch.int64
        if wanted is not None and not wanted.is_floating_point:
            if tensor.dtype != wanted:
                raise _Problem(f"{what}[{key!r}] is {tensor.dtype}, expected {wanted}")
        elif not tensor.dtype.is_floating_point:
            raise _Problem(f"{what}[{key!r}] is {tensor.dtype}, expected floating point")
        elif not bool(torch.isfinite(tensor).all()):
            raise _Problem(f"{what}[{key!r}] holds non-finite values")


def _check_part(where: str, part: Any, registry: dict[str, type[nn.Module]], what: str) -> type:
    """The registered class of an encoder's or head's ``{type, version, init_args, state}``."""
    _keys_problem(where, part, PART_KEYS)
    try:
        cls = lookup(registry, what, part["type"])
    except ValueError as error:
        raise _Problem(f"{where}.type: {error}") from None
    version = part["version"]
    readable = int(getattr(cls, "version", 1))
    if type(version) is not int or version < 1:
        raise _Problem(f"{where}.version is {short(version)}, expected an integer >= 1")
    if version > readable:
        raise _Problem(
            f"{where} is {part['type']} version {version}, newer than this crystaltwins reads "
            f"({readable}); upgrade it"
        )
    if not isinstance(part["init_args"], Mapping):
        raise _Problem(f"{where}.init_args is {type(part['init_args']).__name__}, expected a dict")
    if not isinstance(part["state"], Mapping) or not all(isinstance(k, str) for k in part["state"]):
        raise _Problem(f"{where}.state is not a dict of named tensors")
    return cls


def _meta_shapes(
    where: str, build: Any
) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.dtype], nn.Module]:
    """Weight shapes and dtypes of ``build()`` made on the meta device (no memory)."""
    try:
        module = on_meta_device(build)
    except Exception as error:  # a registered class refusing its stored init args
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise _Problem(
            f"{where}.init_args do not build ({type(error).__name__}: {short(first, 120)})"
        ) from None
    state = module.state_dict()
    return (
        {k: tuple(v.shape) for k, v in state.items()},
        {k: v.dtype for k, v in state.items()},
        module,
    )


#: Limits on the init args of an encoder without its own ``check_init_args`` (GIN, GATGNN,
#: OGCNN, a user's), checked before it is built: no file sizes a module by its args alone.
MAX_INIT_WIDTH = 16_384
MAX_INIT_LAYERS = 64


def _check_generic_init_args(args: Mapping[str, Any], where: str = "encoder.init_args") -> None:
    """Whole numbers at most :data:`MAX_INIT_WIDTH` (layer counts, ``*layers``/``*heads``/
    ``n_conv``, at most :data:`MAX_INIT_LAYERS`), nested settings too; a ``gaussian`` entry
    at most :data:`~crystaltwins.models.cgcnn.MAX_GAUSSIANS` centres."""
    for name, value in args.items():
        if isinstance(value, Mapping):
            _check_generic_init_args(value, f"{where}.{name}")
        elif isinstance(value, int) and not isinstance(value, bool):
            layers = str(name).endswith(("layers", "heads")) or name == "n_conv"
            limit = MAX_INIT_LAYERS if layers else MAX_INIT_WIDTH
            if value > limit:
                raise _Problem(f"{where}.{name} is {value}, at most {limit} expected")
    gaussian = args.get("gaussian")
    if isinstance(gaussian, Mapping) and {"dmin", "dmax", "step", "var"} <= set(gaussian):
        try:
            gaussian_count(gaussian)
        except ValueError as error:
            raise _Problem(f"encoder.{error}") from None


#: The largest element-feature table (values) and neighbour radius (Å) a model file may hold.
MAX_TABLE_VALUES = 256 * 4096
MAX_RADIUS = 30.0


def _check_encoder(part: Any, table: torch.Tensor) -> int:
    """The encoder's output width ``H``, its weights checked against its init args."""
    cls = _check_part("encoder", part, ENCODERS, "encoder")
    args, state = part["init_args"], part["state"]
    dtypes = None
    if hasattr(cls, "check_init_args"):  # shapes computed without building anything
        try:
            shapes, out_dim = cls.check_init_args(args, int(table.shape[1]), state)
        except ValueError as error:
            raise _Problem(f"encoder.{error}") from None
    else:
        _check_generic_init_args(args)
        shapes, dtypes, module = _meta_shapes(
            "encoder",
            lambda: cls.from_config(dict(args), table),  # type: ignore[attr-defined]
        )
        out_dim = int(module.out_dim)  # type: ignore[arg-type]
    _check_tensors("encoder.state", state, shapes, dtypes)
    return out_dim


def _check_heads(kind: str, heads: Any, encoder_out: int) -> dict[str, int]:
    """Each head's output width by role, its weights checked and its input width matched."""
    if not isinstance(heads, Mapping):
        raise _Problem(f"heads is {type(heads).__name__}, expected a dict")
    required, allowed = HEAD_ROLES[kind]
    roles = set(heads)
    if not roles <= allowed or not required <= roles:
        raise _Problem(
            f"a {kind} model has heads {sorted(map(str, roles))}; expected "
            f"{sorted(required)} and at most {sorted(allowed)}"
        )
    outputs: dict[str, int] = {}
    for role in sorted(
        roles, key=lambda r: r == "predictor"
    ):  # the predictor follows the projection
        where = f"heads.{role}"
        part = heads[role]
        cls = _check_part(where, part, HEADS, "head")
        shapes, dtypes, module = _meta_shapes(
            where,
            lambda cls=cls, part=part: cls.from_config(dict(part["init_args"])),  # type: ignore[attr-defined]
        )
        fed = outputs.get("projection", encoder_out) if role == "predictor" else encoder_out
        in_dim = getattr(module, "in_dim", None)
        if in_dim != fed:
            raise _Problem(
                f"{where}.init_args give an input width of {in_dim}, its input is {fed} wide"
            )
        _check_tensors(f"{where}.state", part["state"], shapes, dtypes)
        outputs[role] = int(module.out_dim)  # type: ignore[arg-type]
    return outputs


def _check_info(kind: str, info: Any, head_out: int | None) -> None:
    if not isinstance(info, Mapping):
        raise _Problem(f"info is {type(info).__name__}, expected a dict")
    problem = check_provenance(info)
    if problem:
        raise _Problem(problem)
    if kind != "finetuned":
        return
    for key in ("unit", "target_column"):
        if key in info and not isinstance(info[key], str):
            raise _Problem(f"info.{key} is {short(info[key])}, expected a string")
    targets = info.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise _Problem(f"info.targets is {short(targets)}, expected a list of names")
    transform = info.get("target_transform", "none")
    if not isinstance(transform, str) or transform not in TRANSFORMS:
        raise _Problem(
            f"info.target_transform is {short(transform)}, expected one of {sorted(TRANSFORMS)}"
        )
    task = info.get("task", "regression")
    aux = check_aux_targets(info, task)
    if task == "classification":
        if head_out != 2:
            raise _Problem(f"a classifier needs a head with 2 outputs, this one has {head_out}")
        return
    if task != "regression":
        raise _Problem(f"info.task is {short(task)}, expected 'regression' or 'classification'")
    for key in ("target_mean", "target_std"):
        if key not in info:
            raise _Problem(f"info lacks {key}")
        try:
            real(f"info.{key}", info[key])
        except ValueError as error:
            raise _Problem(str(error)) from None
    if info["target_std"] <= 0:
        raise _Problem(f"info.target_std is {info['target_std']}, expected > 0")
    if head_out is not None and head_out != 1 + aux:
        raise _Problem(
            f"a regression head has one output for the target and one per auxiliary target "
            f"({aux} in info.{AUX_TARGETS_KEY}): {1 + aux} expected, this one has {head_out}"
        )


def check_aux_targets(info: Mapping[str, Any], task: str = "regression") -> int:
    """How many auxiliary targets ``info.aux_targets`` lists (each ``column``, distinct and not
    the target's, ``mean``, ``std`` > 0; a regression model's only); 0 without the entry."""
    if AUX_TARGETS_KEY not in info:
        return 0
    entries = info[AUX_TARGETS_KEY]
    where = f"info.{AUX_TARGETS_KEY}"
    if task != "regression":
        raise _Problem(f"{where}: a {short(task)} model learns no auxiliary targets")
    if not isinstance(entries, list) or len(entries) > MAX_AUX_TARGETS:
        raise _Problem(f"{where} is {short(entries)}, expected a list of at most {MAX_AUX_TARGETS}")
    columns = [info.get("target_column")]
    for k, entry in enumerate(entries):
        _keys_problem(f"{where}[{k}]", entry, {"column", "mean", "std"})
        if not isinstance(entry["column"], str):
            raise _Problem(f"{where}[{k}].column is {short(entry['column'])}, expected a string")
        try:
            real(f"{where}[{k}].mean", entry["mean"])
            real(f"{where}[{k}].std", entry["std"])
        except ValueError as error:
            raise _Problem(str(error)) from None
        if not entry["std"] > 0:
            raise _Problem(f"{where}[{k}].std is {entry['std']}, expected > 0")
        if entry["column"] in columns:
            raise _Problem(
                f"{where}[{k}].column {entry['column']!r} is the target's or listed twice"
            )
        if entry["column"] in RESERVED_AUX_NAMES:
            raise _Problem(f"{where}[{k}].column {entry['column']!r} is a reserved name")
        columns.append(entry["column"])
    return len(entries)


def _check_graph_settings(state: Any) -> None:
    _keys_problem("graph_settings", state, {f.name for f in fields(GraphSettings)})
    defaults = GraphSettings()
    for name, value in state.items():
        try:
            real(f"graph_settings.{name}", value)
        except ValueError as error:
            raise _Problem(str(error)) from None
        if isinstance(getattr(defaults, name), int) and not float(value).is_integer():
            raise _Problem(f"graph_settings.{name} is {value}, expected a whole number")
    if float(state.get("radius", defaults.radius)) > MAX_RADIUS:
        raise _Problem(
            f"graph_settings.radius is {state['radius']} Å, at most {MAX_RADIUS} expected"
        )
    try:
        GraphSettings.from_dict(dict(state))
    except (TypeError, ValueError) as error:
        raise _Problem(f"graph_settings: {error}") from None


def upgrade_v1(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 model file's entries in the format-2 layout (nothing built, nothing checked
    beyond the entries' names; :func:`check_model_payload` checks the result)."""
    _keys_problem("the file", payload, V1_ENTRIES)
    head, head_state = payload["head"], payload["head_state"]
    if (head is None) != (head_state is None):
        raise _Problem("head and head_state must both be given or both be None")
    heads: dict[str, Any] = {}
    if head is not None:
        _keys_problem("head", head, V1_HEAD_KEYS)
        role = "property" if payload["kind"] == "finetuned" else "projection"
        heads[role] = {
            "type": V1_HEAD_TYPES.get(head["type"], head["type"]),
            "version": 1,
            "init_args": {k: head[k] for k in ("in_dim", "hidden_dim", "out_dim")},
            "state": head_state,
        }
    rest = {k: payload[k] for k in ("format", "kind", "featurizer", "graph_settings", "info")}
    encoder = {
        "type": "cgcnn",
        "version": 1,
        "init_args": payload["encoder_config"],
        "state": payload["encoder_state"],
    }
    return {**rest, "format_version": 2, "encoder": encoder, "heads": heads}


def check_model_payload(
    path: Path, payload: Mapping[str, Any], version: int
) -> tuple[AtomFeaturizer, dict[str, Any]]:
    """Check a loaded model file (a dict whose ``format`` is crystaltwins') before building it.

    :param path: the file, for the messages.
    :param payload: what ``torch.load(path, weights_only=True)`` returned.
    :param version: the newest format version this crystaltwins reads.
    :returns: the element featurizer stored in the file, and the file's entries in the layout
        of format ``version`` (a format-1 file upgraded by :func:`upgrade_v1`).
    :raises ValueError: ``"<path>: <problem>"`` on one line, for the first problem found.
    """
    try:
        return _check(payload, version)
    except _Problem as problem:
        raise ValueError(f"{path}: not a usable crystaltwins model file: {problem}") from None


def check_ensemble_payload(
    path: Path, payload: Mapping[str, Any], version: int
) -> list[tuple[AtomFeaturizer, dict[str, Any]]]:
    """Check a loaded ensemble file (``kind`` ``"ensemble"``): its entries, then every member as
    :func:`check_model_payload` checks a model file, then that the members predict the same
    target (task, targets, transform) from the same graphs.

    :returns: each member's element featurizer and entries (see :func:`check_model_payload`).
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
        problem = check_provenance(payload["info"])
        if problem:
            raise _Problem(problem)
        check_aux_targets(payload["info"], payload["info"].get("task", "regression"))
        checked = []
        for k, member in enumerate(members):
            try:
                if not isinstance(member, Mapping):
                    raise _Problem(f"a {type(member).__name__}, expected a model file's dict")
                if member.get("format") != payload["format"] or member.get("kind") != "finetuned":
                    raise _Problem("not a fine-tuned crystaltwins model")
                checked.append(_check(member, version))
            except _Problem as problem:
                raise _Problem(f"members[{k}]: {problem}") from None
        first = members[0]
        for k, member in enumerate(members[1:], start=1):
            for key in _SHARED_MEMBER_INFO:
                if member["info"].get(key) != first["info"].get(key):
                    raise _Problem(
                        f"members[{k}] has info.{key} {short(member['info'].get(key))}, "
                        f"members[0] {short(first['info'].get(key))}"
                    )
            if dict(member["graph_settings"]) != dict(first["graph_settings"]):
                raise _Problem(f"members[{k}] has other graph_settings than members[0]")
        for key in _SHARED_MEMBER_INFO:  # what `info` and `predict` show is the members'
            if key in payload["info"] and payload["info"][key] != first["info"].get(key):
                raise _Problem(
                    f"info.{key} is {short(payload['info'][key])}, its members' "
                    f"{short(first['info'].get(key))}"
                )
        return checked
    except _Problem as problem:
        raise ValueError(f"{path}: not a usable crystaltwins model file: {problem}") from None


def _check_version(payload: Mapping[str, Any], version: int) -> None:
    found = payload.get("format_version")
    if type(found) is int and found > version:
        raise _Problem(
            f"model format {found} is newer than this crystaltwins reads ({version}); upgrade it"
        )
    if type(found) is not int or found < 1:
        raise _Problem(f"format_version is {short(found)}, expected an integer 1..{version}")


def _check(payload: Mapping[str, Any], version: int) -> tuple[AtomFeaturizer, dict[str, Any]]:
    _check_version(payload, version)
    if payload["format_version"] == 1:
        payload = upgrade_v1(payload)
    _keys_problem("the file", payload, MODEL_ENTRIES)
    kind = payload["kind"]
    if kind not in HEAD_ROLES:
        raise _Problem(f"kind is {short(kind)}, expected one of {sorted(HEAD_ROLES)}")
    if not isinstance(payload["featurizer"], Mapping):
        raise _Problem("featurizer is not a dict")
    table = payload["featurizer"].get("table")
    if isinstance(table, Tensor) and (not _is_dense(table) or table.numel() > MAX_TABLE_VALUES):
        raise _Problem("featurizer.table is not a dense table of element features of a sane size")
    try:
        featurizer = AtomFeaturizer.from_state(dict(payload["featurizer"]))
    except (TypeError, ValueError) as error:
        raise _Problem(str(error).splitlines()[0] if str(error) else "invalid featurizer") from None
    encoder_out = _check_encoder(payload["encoder"], torch.tensor(featurizer.table))
    outputs = _check_heads(kind, payload["heads"], encoder_out)
    _check_graph_settings(payload["graph_settings"])
    _check_info(kind, payload["info"], outputs.get("property"))
    return featurizer, dict(payload)
