"""Target transforms, and the one conversion from a regression head's output to the target's units.

A regression head is trained on ``(transform(y) - mean) / std``: the target ``y`` in its own
units (e.g. G_VRH in GPa), transformed (``log10`` or not), standardised with the training split's
``mean`` and ``std``. :func:`to_target_units` undoes both; fine-tuning (its model's ``forward``
and ``test_predictions.csv``) and :func:`crystaltwins.evaluation.inference.predict` all use it, so
every prediction a user sees is in the target's own units.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

#: Target transforms: name -> (forward, inverse, valid-value test); each works on NumPy arrays,
#: the inverse on torch tensors too.
TRANSFORMS: dict[str, tuple[Any, Any, Any]] = {
    "none": (lambda y: y, lambda y: y, lambda y: np.isfinite(y)),
    "log10": (np.log10, lambda y: 10.0**y, lambda y: np.isfinite(y) & (y > 0)),
}

ArrayOrTensor = TypeVar("ArrayOrTensor")


def check_transform(name: str) -> str:
    """``name`` when it is a known target transform.

    :raises ValueError: naming the known ones otherwise.
    """
    if name not in TRANSFORMS:
        raise ValueError(f"unknown target transform {name!r}; choose from {sorted(TRANSFORMS)}")
    return name


def to_transformed_units(output: ArrayOrTensor, mean: float, std: float) -> ArrayOrTensor:
    """A regression head's standardised output as the transformed target (``output·std + mean``)."""
    return output * std + mean  # type: ignore[operator,return-value]


def to_target_units(
    output: ArrayOrTensor, mean: float, std: float, transform: str = "none"
) -> ArrayOrTensor:
    """A regression head's standardised output in the target's own units.

    :param output: head outputs (standardised, transformed target), a NumPy array or a tensor.
    :param mean: mean of the transformed training targets.
    :param std: standard deviation of the transformed training targets.
    :param transform: the run's target transform (``"none"`` or ``"log10"``).
    :returns: same type and shape as ``output``, e.g. G_VRH in GPa for a ``log10`` run on G_VRH.
    """
    inverse = TRANSFORMS[check_transform(transform)][1]
    return inverse(to_transformed_units(output, mean, std))
