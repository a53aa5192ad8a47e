"""Tests for benchmarks/learning_curve.py: its table, and what it reuses."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("learning_curve")


def _run(seed: int, test: float, count: int = 1000) -> dict:
    return {"seed": seed, "test": {"mae": test, "count": count}, "val": {"mae": test}}


def test_the_table_says_which_std_and_names_single_runs_and_test_sets() -> None:
    results = {
        "settings": {"pretrained_label": "CT"},
        "tasks": {
            "perovskites": {
                "unit": "eV/cell",
                "sizes": {
                    "1000": {
                        # scratch has a seed CT lacks: the gain is over seeds 0 and 1 only
                        "scratch": [_run(0, 0.10), _run(1, 0.12), _run(2, 0.50)],
                        "ct": [_run(0, 0.09), _run(1, 0.11)],
                    },
                    "all": {"scratch": [_run(0, 0.05, 3785)], "ct": [_run(0, 0.04, 3785)]},
                },
            }
        },
    }
    table = _script().summarize(results)
    assert "population std (ddof 0)" in table and "test crystals" in table
    row_1000 = next(line for line in table.splitlines() if line.startswith("| 1000 "))
    assert "+9.1% better" in row_1000  # (0.11 - 0.10) / 0.11, not against the 3-seed mean
    assert "± 0.1840 (n=3)" in row_1000 and row_1000.endswith("| 1,000 |")
    row_all = next(line for line in table.splitlines() if line.startswith("| all "))
    assert "0.0500 (1 run)" in row_all and "± 0.0000" not in row_all
    assert row_all.endswith("| 3,785 |")


def test_a_finished_run_with_other_settings_is_not_reused(tmp_path: Path) -> None:
    """A run folder in OUT made with another start (or epochs, or caps) is refused in one line,
    not counted as this curve's point."""
    from crystaltwins.evaluation.tasks import TASKS
    from crystaltwins.training.common import write_config
    from crystaltwins.training.finetune import FinetuneConfig

    script = _script()
    args = argparse.Namespace(
        out=tmp_path / "out", data_root=tmp_path, pretrained="mp-eform", batch_size=128,
        epochs=200, min_steps=0, max_epochs=2000, encoder_lr_factor=1.0,
        freeze_encoder_epochs=0, encoder_anchor=0.0, warmup_epochs=0, max_eval=1000,
        all_from=None, lr_schedule="constant", head_init="new",
    )  # fmt: skip
    task = TASKS["perovskites"]
    settings = script.finetune_settings(args, task, 1000, 0, "ct")
    folder = Path(settings["out"])
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"seed": 0, "test": {"mae": 0.1}}')
    write_config(folder, FinetuneConfig(**settings))
    assert script.finished_point(args, task, 1000, 0, "ct")["test"]["mae"] == 0.1
    write_config(folder, FinetuneConfig(**{**settings, "pretrained": "mp-multi-33k"}))
    with pytest.raises(ValueError, match="other settings than this benchmark's.*pretrained"):
        script.finished_point(args, task, 1000, 0, "ct")
    write_config(folder, FinetuneConfig(**{**settings, "lr_schedule": "cosine"}))
    with pytest.raises(ValueError, match="other settings than this benchmark's.*lr_schedule"):
        script.finished_point(args, task, 1000, 0, "ct")


def test_default_in_an_earlier_results_file_means_the_crystal_twins_encoder() -> None:
    """Results written before ``default`` moved to mp-multi-33k ran the Crystal Twins
    encoder: their CT points are reused by a run of ``crystal-twins``, not of ``default``."""
    differing = _script()._differing
    earlier = {"pretrained": "default"}
    names = ("pretrained",)
    assert differing(earlier, {"pretrained": "crystal-twins"}, names) == ""
    assert differing(earlier, {"pretrained": "mp-multi-33k"}, names) == (
        "pretrained crystal-twins (now mp-multi-33k)"
    )
    assert differing({"pretrained": "mp-multi"}, {"pretrained": "mp-multi"}, names) == ""
