"""Regression and classification metrics."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np


def regression_metrics(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² of ``prediction`` against ``target`` (same units as the target)."""
    target = np.asarray(target, dtype=np.float64).ravel()
    prediction = np.asarray(prediction, dtype=np.float64).ravel()
    error = prediction - target
    ss_res = float(np.sum(error**2))
    ss_tot = float(np.sum((target - target.mean()) ** 2)) if len(target) else 0.0
    return {
        "mae": float(np.mean(np.abs(error))) if len(target) else float("nan"),
        "rmse": float(np.sqrt(np.mean(error**2))) if len(target) else float("nan"),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "count": int(len(target)),
    }


def classification_metrics(target: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """Accuracy and ROC AUC for binary labels ``target`` and positive-class ``probability``."""
    from sklearn.metrics import roc_auc_score

    target = np.asarray(target).ravel().astype(int)
    probability = np.asarray(probability, dtype=np.float64).ravel()
    # class 1 above 0.5, as the predictions files write it (0.5 itself: class 0)
    accuracy = float(np.mean((probability > 0.5) == target)) if len(target) else float("nan")
    auc = (
        float(roc_auc_score(target, probability))
        if len(set(target.tolist())) == 2
        else float("nan")
    )
    return {"accuracy": accuracy, "auc": auc, "count": int(len(target))}


def metrics_json(metrics: Any) -> str:
    """``metrics`` as strict JSON: a value that is not a finite number (an R² of one crystal, an
    AUC of one class) is written ``null``, not the bare ``NaN`` that JSON parsers reject."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return json.dumps(clean(metrics), indent=1, allow_nan=False)


def labels_to_reach(sizes: Sequence[float], errors: Sequence[float], error: float) -> float:
    """How many training crystals a learning curve needs to reach ``error``.

    ``sizes`` (training crystals, ascending) and ``errors`` (the curve's MAE at each, any unit) are
    the measured points; between two of them the curve is taken as a straight line in log-log
    (a power law, as learning curves are). Returns the size at the first segment, from the small
    end, where the curve comes down to ``error``; ``0.0`` when ``error`` is above the curve's
    first point (fewer crystals than measured would do) and ``math.inf`` when the curve never
    comes down to it (more crystals than measured are needed). Nothing is extrapolated.
    """
    points = [(float(n), float(e)) for n, e in zip(sizes, errors, strict=True)]
    if not points or not all(0 < v < math.inf for point in points for v in point):
        raise ValueError("labels_to_reach needs positive, finite sizes and errors")
    if not 0 < error < math.inf:
        raise ValueError(f"labels_to_reach needs a positive, finite error, not {error}")
    if any(b[0] <= a[0] for a, b in pairwise(points)):
        raise ValueError("labels_to_reach needs sizes in ascending order")
    if error >= points[0][1]:
        return 0.0 if error > points[0][1] else points[0][0]
    for (n0, e0), (n1, e1) in pairwise(points):
        if e1 <= error < e0:
            fraction = math.log(e0 / error) / math.log(e0 / e1)
            return math.exp(math.log(n0) + fraction * math.log(n1 / n0))
    return math.inf
