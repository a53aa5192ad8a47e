"""Command-line options made from a config dataclass's fields: one option per field, its help
from the field's ``metadata["help"]`` and its default shown, so that the CLI and the Python
API offer the same settings with the same defaults (:mod:`crystaltwins.training.configs`)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _base_type(hint: Any) -> tuple[Any, bool]:
    """``(type without None, whether None is allowed)``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return hint, False


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_help(f: dataclasses.Field, required: bool = False) -> str:
    """A field's help text with its default (or ``default_text``)."""
    text = f.metadata.get("help", "")
    if "default_text" in f.metadata:
        return f"{text} (default: {f.metadata['default_text']})"
    if f.default is not dataclasses.MISSING:
        if f.default is None or isinstance(f.default, bool):
            return text
        return f"{text} (default: {_shown(f.default)})"
    if f.default_factory is not dataclasses.MISSING:
        return f"{text} (default: {_shown(f.default_factory())})"
    return f"{text} (required here or in --config)" if required else text


def _flag(f: dataclasses.Field) -> str:
    """A field's option name: ``--name`` (``metadata["flag"]`` if set), ``--no-name`` for a
    boolean that defaults to true."""
    flag = "--" + f.metadata.get("flag", f.name.replace("_", "-"))
    return "--no-" + flag[2:] if f.default is True else flag


def add_config_options(
    parser: argparse.ArgumentParser | Any,
    config_cls: type,
    *,
    skip: tuple[str, ...] = (),
    required_here: bool = True,
) -> None:
    """Add ``--field-name`` for every field of ``config_cls`` (but ``skip`` and those marked
    ``cli=False``). Options default to ``None`` ("not given"; the config's default applies),
    booleans are ``--name`` (default false) or ``--no-name`` (default true), tuples and lists
    take several values.

    :param required_here: fields without a default say "required here or in --config"."""
    hints = typing.get_type_hints(config_cls)
    own = config_cls.__dict__.get("__annotations__", {})
    ordered = sorted(dataclasses.fields(config_cls), key=lambda f: f.name not in own)
    for f in ordered:  # the command's own settings first, then the shared run options
        if f.name in skip or f.metadata.get("cli", True) is False:
            continue
        flag = _flag(f)
        kind, _ = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        if kind is bool:
            if f.default is True:
                kwargs["action"] = "store_false"
                text = f.metadata.get("help", "")
                kwargs["help"] = f"do not {text}" if text else None
            else:
                kwargs["action"] = "store_true"
                kwargs["help"] = field_help(f)
            parser.add_argument(flag, **kwargs)
            continue
        origin = typing.get_origin(kind)
        if origin is tuple:
            args = typing.get_args(kind)
            kwargs.update(nargs=len(args), type=args[0])
        elif origin is list:
            kwargs.update(nargs="+", type=typing.get_args(kind)[0])
        else:
            kwargs["type"] = kind if kind in (int, float) else str
        for key in ("choices", "metavar"):
            if key in f.metadata:
                kwargs[key] = f.metadata[key]
        kwargs["help"] = field_help(f, required=required_here)
        parser.add_argument(flag, **kwargs)


def given_settings(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The settings of ``config_cls`` given on the command line (``None``: not given)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def settings_as_flags(
    config_cls: type, settings: dict[str, Any], skip: tuple[str, ...] = ()
) -> list[str]:
    """The options of :func:`add_config_options` that give ``settings`` (a run's
    ``config.yaml``), leaving out defaults, ``skip`` and fields the CLI does not offer: the
    command line that made a run, in field order."""
    words: list[str] = []
    for f in dataclasses.fields(config_cls):
        if f.name in skip or f.metadata.get("cli", True) is False or f.name not in settings:
            continue
        value = settings[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value is None or (list(value) if isinstance(value, tuple) else value) == (
            list(default) if isinstance(default, tuple) else default
        ):
            continue
        if isinstance(value, bool):
            words.append(_flag(f))
        else:
            values = value if isinstance(value, (list, tuple)) else [value]
            words += [_flag(f), *(_shown(v) for v in values)]
    return words
