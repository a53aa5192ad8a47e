"""Tests for benchmarks/label_efficiency.py on small hand-made curves whose answers are known."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("label_efficiency")


def _run(train: int, val: float, test: float | None = None, init: str = "scratch") -> dict:
    """A run's metrics.json, as finetune writes it (the fields the script reads)."""
    return {
        "init": init,
        "crystals": {"train": train, "val": 50, "test": 60},
        "val": {"mae": val, "count": 50},
        "test": {"mae": val if test is None else test, "count": 60},
    }


def _results(path: Path, label: str, pretrained: str, sizes: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"pretrained_label": label, "pretrained": pretrained, "encoder_lr_factor": "1.0"}
    path.write_text(
        json.dumps({"settings": settings, "tasks": {"t": {"unit": "eV", "sizes": sizes}}})
    )
    return path


@pytest.fixture
def curves(tmp_path: Path) -> dict[str, Path]:
    # scratch: 0.4 at 100 crystals, 0.1 at "1000" (capped: 900 crystals), 0.05 with all (4,000)
    scratch = _results(
        tmp_path / "scratch" / "results.json",
        "CT",
        "default",
        {
            "100": {"scratch": [_run(100, 0.35), _run(100, 0.45)], "ct": []},
            "1000": {"scratch": [_run(900, 0.1, 0.2)], "ct": []},
            "all": {"scratch": [_run(4000, 0.05)], "ct": []},
        },
    )
    # one start in two files: its 1,000-label point in the first, its 100-label point in the second
    first = _results(
        tmp_path / "a" / "results.json",
        "S",
        "a.pt",
        {"1000": {"scratch": [], "ct": [_run(900, 0.01)]}},
    )
    second = _results(
        tmp_path / "b" / "results.json",
        "S",
        "b.pt",
        {"100": {"ct": [_run(100, 0.2), _run(100, 0.5)]}},
    )
    # run folders beside the second file: its own 300-label runs, and runs it must ignore
    for seed, (init, val) in enumerate(
        [("b.pt", 0.15), ("b.pt", 0.15), ("other.pt", 0.01), ("scratch", 0.9)]
    ):
        folder = tmp_path / "b" / "runs" / "t" / "n300" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(_run(300, val, init=init)))
    return {"scratch": scratch, "first": first, "second": second}


def test_label_efficiency_on_known_curves(curves: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--scratch", str(curves["scratch"]), "--start", str(curves["first"])]
    _script().main([*argv, "--start", str(curves["second"]), "--out", str(out)])
    written = json.loads((out / "results.json").read_text())
    rows = written["starts"]["S"]["tasks"]["t"]
    assert list(rows) == ["100", "300", "1000"]  # in size order, whatever the order of the files
    assert written["starts"]["S"]["files"] == [str(curves["first"]), str(curves["second"])]
    # between 100 crystals (0.4) and 900 (0.1, the mean crystals, not the nominal 1,000) the
    # curve is 0.4 * (n / 100) ** -log(4) / log(9): 0.35 (mean of 0.2 and 0.5) is reached at
    expected = 100 * 9 ** (math.log(0.4 / 0.35) / math.log(4))
    assert rows["100"]["val"]["scratch_labels"] == pytest.approx(expected)
    assert rows["100"]["val"]["worth"] == pytest.approx(expected / 100)
    # each seed on the mean curve: 0.2 inside it, 0.5 worse than its first point
    assert rows["100"]["val"]["seed_worths"][0] == pytest.approx(9 ** (math.log(2) / math.log(4)))
    assert rows["100"]["val"]["seed_worths"][1] is None
    # the run folders: only the two runs from the file's own model (b.pt), mean 0.15
    assert rows["300"]["seeds"] == 2
    assert rows["300"]["val"]["mae"] == pytest.approx(0.15)
    assert rows["300"]["val"]["scratch_labels"] == pytest.approx(
        100 * 9 ** (math.log(0.4 / 0.15) / math.log(4))
    )
    # better than scratch with every crystal: a word, not a number; the test split read apart
    assert rows["1000"]["val"]["scratch_labels"] == "more than measured"
    assert rows["1000"]["test"]["scratch_mae"] == pytest.approx(0.2)
    # the goal: 25% below scratch at 1,000 (0.1 -> 0.075), between 900 (0.1) and 4,000 (0.05)
    goal = written["goal"]["t"]["val"]
    assert goal["goal_mae"] == pytest.approx(0.075)
    assert goal["scratch_labels"] == pytest.approx(
        900 * (4000 / 900) ** (math.log(0.1 / 0.075) / math.log(2))
    )
    summary = (out / "summary.md").read_text()
    assert f"x{expected / 100:.2f}" in summary and "> x4.44" in summary
    assert (out / "label_efficiency.png").stat().st_size > 10_000


def test_label_efficiency_refuses_a_point_given_twice(
    curves: dict[str, Path], tmp_path: Path
) -> None:
    again = _results(
        tmp_path / "c" / "results.json", "S", "c.pt", {"100": {"ct": [_run(100, 0.3)]}}
    )
    argv = ["--scratch", str(curves["scratch"]), "--start", str(curves["second"])]
    with pytest.raises(SystemExit, match="also in"):
        _script().main([*argv, "--start", str(again), "--out", str(tmp_path / "out")])


def test_label_efficiency_writes_fewer_than_measured_as_words(tmp_path: Path) -> None:
    scratch = _results(
        tmp_path / "s" / "results.json",
        "CT",
        "default",
        {"100": {"scratch": [_run(100, 0.4)]}, "300": {"scratch": [_run(300, 0.2)]}},
    )
    worse = _results(
        tmp_path / "w" / "results.json", "W", "w.pt", {"300": {"ct": [_run(300, 0.5)]}}
    )
    _script().main(
        ["--scratch", str(scratch), "--start", str(worse), "--out", str(tmp_path / "out")]
    )
    row = json.loads((tmp_path / "out" / "results.json").read_text())["starts"]["W"]["tasks"]["t"]
    assert row["300"]["val"]["scratch_labels"] == "fewer than measured"
    assert row["300"]["val"]["worth"] is None
    assert "< 100" in (tmp_path / "out" / "summary.md").read_text()


def test_a_runs_start_matches_the_scripts_by_what_default_meant() -> None:
    same = _script()._same_model
    assert same("default", "default") and same("default", "crystal-twins")
    assert same("mp-multi-33k", "mp-multi-33k") and not same("mp-multi-33k", "default")
    assert not same(None, "crystal-twins")
