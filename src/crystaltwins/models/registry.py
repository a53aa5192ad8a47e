"""Registries of encoders and heads: a model file stores a registered *name*, never a class path,
so loading stays ``torch.load(weights_only=True)`` and builds only classes listed here.

Adding an encoder is one new module with its class and one line in :data:`ENCODERS` (or a call
to :func:`register_encoder`). An encoder class provides:

- ``__init__(atom_features: Tensor, **init_args)``: ``atom_features`` the ``(n_z, n_features)``
  element table (row Z element Z, row 0 a masked atom, all zeros); ``init_args`` JSON-able.
- ``config``: its ``init_args`` as a dict (what the model file stores).
- ``from_config(config, atom_features, state_dict=None)`` (classmethod): rebuild it, loading the
  weights strictly when given.
- ``forward(batch: CrystalGraphBatch) -> Tensor`` ``(B, H)``, the crystal embeddings.
- ``out_dim``: ``H``.
- ``atom_embeddings(batch) -> Tensor`` ``(n_atoms, A)``, if it has per-atom features.
- ``version`` (class attribute, default 1): raise it when the init args or weight names change;
  files of a newer version are refused.
- ``check_init_args(config, n_features, state) -> (shapes, H)`` (classmethod, optional): the
  weight shapes and ``H`` that ``config`` implies, computed without building (``ValueError`` on a
  bad argument). Without it, a model file's encoder is first built on the ``meta`` device (no
  memory) to read the same.

A head is an :class:`torch.nn.Module` ``(B, in_dim) → (B, out_dim)`` with ``in_dim``,
``out_dim``, ``config``, ``version`` and ``from_config(config, state_dict=None)``; see
:mod:`crystaltwins.models.heads`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.gatgnn import GATGNNEncoder
from crystaltwins.models.gin import GINEncoder
from crystaltwins.models.heads import ProjectionHead, PropertyHead, SimSiamPredictor
from crystaltwins.models.ogcnn import OGCNNEncoder

#: Encoder name → class.
ENCODERS: dict[str, type[nn.Module]] = {
    "cgcnn": CGCNNEncoder,
    "gin": GINEncoder,
    "gatgnn": GATGNNEncoder,
    "ogcnn": OGCNNEncoder,
}
#: Head name → class.
HEADS: dict[str, type[nn.Module]] = {
    "projection": ProjectionHead,
    "property": PropertyHead,
    "simsiam_predictor": SimSiamPredictor,
}

T = TypeVar("T", bound=type)


def _register(registry: dict[str, type[nn.Module]], what: str, name: str, cls: Any) -> Any:
    def add(cls: T) -> T:
        if name in registry and registry[name] is not cls:
            raise ValueError(f"{what} {name!r} is already registered ({registry[name].__name__})")
        registry[name] = cls
        return cls

    return add if cls is None else add(cls)


def register_encoder(name: str, cls: type[nn.Module] | None = None) -> Any:
    """Register an encoder class under ``name``; usable as a decorator (``@register_encoder("x")``)."""
    return _register(ENCODERS, "encoder", name, cls)


def register_head(name: str, cls: type[nn.Module] | None = None) -> Any:
    """Register a head class under ``name``; usable as a decorator."""
    return _register(HEADS, "head", name, cls)


def lookup(registry: dict[str, type[nn.Module]], what: str, name: Any) -> type[nn.Module]:
    """The class registered as ``name``.

    :raises ValueError: naming the registered ones otherwise.
    """
    if not isinstance(name, str) or name not in registry:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise ValueError(f"unknown {what} {shown}; registered: {', '.join(sorted(registry))}")
    return registry[name]


def name_of(registry: dict[str, type[nn.Module]], what: str, module: nn.Module) -> str:
    """The name under which ``module``'s class (exactly) is registered.

    :raises ValueError: for a class that is not registered (it could not be loaded again).
    """
    for name, cls in registry.items():
        if type(module) is cls:
            return name
    raise ValueError(
        f"{type(module).__name__} is not a registered {what}: register it (register_{what}) "
        "so that its model file can be loaded"
    )


def build_encoder(name: str, atom_features: torch.Tensor, **init_args: Any) -> nn.Module:
    """A fresh encoder of the registered class ``name``."""
    return lookup(ENCODERS, "encoder", name)(atom_features, **init_args)


def describe(module: nn.Module, registry: dict[str, type[nn.Module]], what: str) -> dict[str, Any]:
    """``{type, version, init_args, state}`` of an encoder or head, for a model file (tensors
    copied to the CPU)."""
    return {
        "type": name_of(registry, what, module),
        "version": int(getattr(type(module), "version", 1)),
        "init_args": module.config,  # type: ignore[attr-defined]
        "state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }


def on_meta_device(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with every parameter on the ``meta`` device: shapes without memory."""
    with torch.device("meta"):
        return build()
