"""Target transforms (``none``, ``log10``): the forward one applied to the labels before
training, its inverse applied by :class:`crystaltwins.models.property_model.PropertyModel` to
give every prediction a user sees in the target's own units.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Target transforms: name -> (forward, inverse, valid-value test); each works on NumPy arrays,
#: the inverse on torch tensors too.
TRANSFORMS: dict[str, tuple[Any, Any, Any]] = {
    "none": (lambda y: y, lambda y: y, lambda y: np.isfinite(y)),
    "log10": (np.log10, lambda y: 10.0**y, lambda y: np.isfinite(y) & (y > 0)),
}


def check_transform(name: str) -> str:
    """``name`` when it is a known target transform.

    :raises ValueError: naming the known ones otherwise.
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown target transform {name!r}; choose from {sorted(TRANSFORMS)}")
    return name
