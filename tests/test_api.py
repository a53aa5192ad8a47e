"""The package's top level: ``import crystaltwins as ct`` and ``python -m crystaltwins``."""

from __future__ import annotations

import subprocess
import sys

import pytest

import crystaltwins as ct


def test_top_level_functions_are_the_api() -> None:
    from crystaltwins import api

    for name in ("featurize", "pretrain", "finetune", "predict", "embed", "load_model"):
        assert getattr(ct, name) is getattr(api, name)
        assert name in dir(ct)
    with pytest.raises(AttributeError):
        ct.no_such_function  # noqa: B018


def test_subpackages_export_the_data_flow() -> None:
    """The README's module table: each step's names import from its package."""
    from crystaltwins.data import GraphCache, build_graph_cache, collate_graphs  # noqa: F401
    from crystaltwins.graph import AtomFeaturizer, GraphSettings, build_crystal_graph  # noqa: F401
    from crystaltwins.io import (  # noqa: F401
        iter_entries,
        parse_entry,
        read_records,
        records_from_structures,  # noqa: F401
    )


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crystaltwins", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"crystaltwins {ct.__version__}"


def test_finetune_and_featurize_from_keywords(perovskite_subset, tmp_path) -> None:
    summary = ct.featurize(perovskite_subset, tmp_path / "cache")
    assert summary.crystals == 1500
    metrics = ct.finetune(
        tmp_path / "cache",
        "e_form",
        tmp_path / "run",
        from_scratch=True,
        epochs=1,
        max_train=100,
        max_eval=50,
        progress=False,
        plots=False,
    )
    assert metrics["crystals"]["train"] == 100 and metrics["test"]["mae"] > 0
    with pytest.raises(ValueError, match="needs data, target and out"):
        ct.finetune(perovskite_subset, "e_form")
    bundle = ct.load_model(tmp_path / "run")
    assert bundle.kind == "finetuned"
