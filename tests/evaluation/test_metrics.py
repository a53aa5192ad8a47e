"""Tests for crystaltwins.evaluation.metrics."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

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
    ],
)
def test_labels_to_reach_rejects_curves_it_cannot_read(sizes: list, errors: list) -> None:
    with pytest.raises(ValueError):
        labels_to_reach(sizes, errors, 0.1)


def _script(name: str) -> ModuleType:
    path = Path(__file__).parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_label_efficiency_reads_the_committed_curves(tmp_path: Path) -> None:
    results_dir = Path(__file__).parents[2] / "docs" / "results"
    scratch_file = results_dir / "learning_curves" / "results.json"
    start_file = results_dir / "transfer" / "mp_joint33k" / "results.json"
    _script("label_efficiency").main(
        ["--scratch", str(scratch_file), "--start", str(start_file), "--out", str(tmp_path)]
    )
    written = json.loads((tmp_path / "results.json").read_text())
    start = written["starts"]["MP multi-task transfer (33k crystals)"]
    # the perovskite points read from the run folders beside the file, not only its results.json
    assert set(start["tasks"]["perovskites"]) == {"100", "300", "1000", "all"}
    row = start["tasks"]["perovskites"]["1000"]["val"]
    committed = json.loads(start_file.read_text())["tasks"]["perovskites"]["sizes"]["1000"]["ct"]
    assert row["mae"] == pytest.approx(np.mean([run["val"]["mae"] for run in committed]))
    curve = json.loads(scratch_file.read_text())["tasks"]["perovskites"]["sizes"]
    sizes = ["100", "300", "1000", "3000", "all"]
    expected = labels_to_reach(
        [np.mean([r["crystals"]["train"] for r in curve[s]["scratch"]]) for s in sizes],
        [np.mean([r["val"]["mae"] for r in curve[s]["scratch"]]) for s in sizes],
        row["mae"],
    )
    assert 1000 < expected < 3000  # better than scratch at 1,000 labels, worse than at 3,000
    assert row["scratch_labels"] == pytest.approx(expected)
    assert row["ratio"] == pytest.approx(expected / 1000)
    # with all the labels the start beats every scratch point: more than measured, not a number
    assert start["tasks"]["perovskites"]["all"]["val"]["scratch_labels"] == "more than measured"
    assert set(written["goal"]) == set(json.loads(scratch_file.read_text())["tasks"])
    assert f"x{expected / 1000:.2f}" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "label_efficiency.png").stat().st_size > 20_000
