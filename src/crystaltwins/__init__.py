"""crystaltwins: self-supervised learning on crystal structures (Crystal Twins).

``import crystaltwins as ct`` gives the user-facing functions (:mod:`crystaltwins.api`):
``ct.featurize``, ``ct.crystal_graph``, ``ct.pretrain``, ``ct.finetune``, ``ct.predict``, ``ct.embed``,
``ct.load_model``, ``ct.bench``, ``ct.plot_embeddings`` and ``ct.save_crystals``; they are
imported on first use, so that ``import crystaltwins`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = (
    "bench",
    "embed",
    "featurize",
    "crystal_graph",
    "finetune",
    "load_model",
    "plot_embeddings",
    "predict",
    "pretrain",
    "save_crystals",
)


def __getattr__(name: str) -> Any:
    if name in _API:
        from crystaltwins import api

        return getattr(api, name)
    raise AttributeError(f"module 'crystaltwins' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
