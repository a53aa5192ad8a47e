"""Regression and classification metrics."""

from __future__ import annotations

import json
import math
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
    accuracy = float(np.mean((probability >= 0.5) == target)) if len(target) else float("nan")
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
