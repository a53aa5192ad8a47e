"""Checks of the init args a model file stores, before anything is built from them.

Encoder classes use these in their ``check_init_args`` (see
:mod:`crystaltwins.models.registry`); each raises a :class:`ValueError` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_keys(what: str, found: Any, expected: frozenset[str] | set[str]) -> Mapping[str, Any]:
    """``found`` when it is a dict with exactly the string keys ``expected``."""
    if not isinstance(found, Mapping):
        raise ValueError(f"{what} is {type(found).__name__}, expected a dict")
    names = {k for k in found if isinstance(k, str)}
    if len(names) != len(found):
        raise ValueError(f"{what} has keys that are not strings")
    missing, unknown = sorted(expected - names), sorted(names - expected)
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing[:8])}")
    if unknown:
        shown = ", ".join(short(k, 40) for k in unknown[:8])
        raise ValueError(f"{what} has unknown {'keys' if len(unknown) > 1 else 'key'} {shown}")
    return found


def positive_int(what: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an ``int`` (not a bool) ``>= minimum``."""
    if type(value) is not int or value < minimum:
        raise ValueError(f"{what} is {short(value)}, expected an integer >= {minimum}")
    return value


def real(what: str, value: Any) -> float:
    """``value`` when it is a finite ``int`` or ``float``."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{what} is {short(value)}, expected a finite number")
    return float(value)
