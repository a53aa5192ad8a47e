"""Tests for crystaltwins.evaluation.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crystaltwins.evaluation.metrics import labels_to_reach, regression_metrics


def test_regression_metrics_of_a_known_prediction() -> None:
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0]))
    assert metrics["mae"] == pytest.approx(0.5)
    assert metrics["rmse"] == pytest.approx(math.sqrt(1.25 / 3))
    assert metrics["count"] == 3


def test_labels_to_reach_follows_a_power_law_exactly() -> None:
    # error = 2 * n^-0.5 is a straight line in log-log: interpolation recovers it exactly.
    sizes = [100, 1000, 10000]
    errors = [2 * n**-0.5 for n in sizes]
    for n in (100, 150, 999, 3000, 10000):
        assert labels_to_reach(sizes, errors, 2 * n**-0.5) == pytest.approx(n, rel=1e-9)


def test_labels_to_reach_does_not_extrapolate() -> None:
    sizes, errors = [100, 300, 1000], [0.4, 0.2, 0.1]
    assert labels_to_reach(sizes, errors, 0.5) == 0.0  # worse than the smallest point
    assert labels_to_reach(sizes, errors, 0.4) == 100
    assert labels_to_reach(sizes, errors, 0.05) == math.inf  # better than the largest point
    assert labels_to_reach(sizes, errors, 0.1) == pytest.approx(1000)


def test_labels_to_reach_takes_the_first_crossing_of_a_noisy_curve() -> None:
    # A curve that goes back up (seed noise) is crossed first between 100 and 300.
    assert labels_to_reach([100, 300, 1000, 3000], [0.4, 0.2, 0.25, 0.1], 0.22) < 300


@pytest.mark.parametrize(
    ("sizes", "errors"),
    [
        ([], []),
        ([100, 100], [0.2, 0.1]),
        ([300, 100], [0.2, 0.1]),
        ([100], [0.0]),
        ([100, 300], [0.2]),
        ([100, math.inf], [0.2, 0.1]),
        ([100, 300], [0.2, math.nan]),
    ],
)
def test_labels_to_reach_rejects_curves_it_cannot_read(
    sizes: list[float], errors: list[float]
) -> None:
    with pytest.raises(ValueError):
        labels_to_reach(sizes, errors, 0.1)


@pytest.mark.parametrize("error", [0.0, -0.1, math.nan, math.inf])
def test_labels_to_reach_rejects_an_error_that_is_no_mae(error: float) -> None:
    with pytest.raises(ValueError, match="positive, finite error"):
        labels_to_reach([100, 300], [0.4, 0.2], error)


def test_accuracy_reads_a_probability_of_one_half_as_the_predictions_file_does() -> None:
    """class 1 above 0.5 (the predictions files' ``predicted_class``), 0.5 itself class 0."""
    from crystaltwins.evaluation.metrics import classification_metrics

    assert classification_metrics(np.array([0]), np.array([0.5]))["accuracy"] == 1.0
    assert classification_metrics(np.array([1]), np.array([0.51]))["accuracy"] == 1.0
