"""Whole fine-tuning runs trained together (``evaluation.runs.finetune_together``, ``finetune
--ensemble K --members-together``): every run folder gets a single run's files, with the
results of the runs trained one after another."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from pathlib import Path

import pytest

from crystaltwins.cli.main import build_parser, main
from crystaltwins.evaluation.runs import finetune, finetune_together
from crystaltwins.models.checkpoint import load_model
from crystaltwins.training.configs import FinetuneConfig
from tests.helpers import cpu_finetune_config

CRYSTALS = 150


@pytest.fixture(scope="module")
def perovskites_150(perovskite_subset, tmp_path_factory) -> Path:
    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("data") / "perovskites_150.csv"
    with gzip.open(perovskite_subset, "rt", newline="") as src, open(path, "w", newline="") as dst:
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), CRYSTALS + 1))
    return path


def _config(source: Path, out: Path, cache_root: Path, **kw) -> FinetuneConfig:
    settings = dict(from_scratch=True, epochs=2, batch_size=32, ensemble=2, plots=False, seed=5)
    return cpu_finetune_config(source, out, cache_root, **{**settings, **kw})


def test_ensemble_members_together_matches_sequential(perovskites_150, cache_root, tmp_path):
    """``finetune --ensemble 2 --members-together`` writes every file of the sequential
    ensemble, with the same training history and (up to float32 rounding) the same results."""
    apart = finetune(_config(perovskites_150, tmp_path / "apart", cache_root))
    config = _config(perovskites_150, tmp_path / "together", cache_root, members_together=True)
    together = finetune(config)
    for k in range(2):
        a, t = tmp_path / "apart" / "members" / str(k), tmp_path / "together" / "members" / str(k)
        assert {p.name for p in t.iterdir()} >= {
            "config.yaml",
            "history.csv",
            "metrics.json",
            "model.pt",
            "member_predictions.npz",
            "test_predictions.csv",
        }
        rows_a = list(csv.DictReader((a / "history.csv").open()))
        rows_t = list(csv.DictReader((t / "history.csv").open()))
        assert len(rows_a) == len(rows_t) == 2
        for ra, rt in zip(rows_a, rows_t, strict=True):
            assert float(rt["train_loss"]) == pytest.approx(float(ra["train_loss"]), rel=1e-5)
            assert float(rt["val_mae"]) == pytest.approx(float(ra["val_mae"]), rel=5e-3)
        ma, mt = (json.loads((f / "metrics.json").read_text()) for f in (a, t))
        assert mt["best_epoch"] == ma["best_epoch"]
        assert mt["crystals"] == ma["crystals"]
        assert mt["epochs_run"] == ma["epochs_run"] == 2
        assert mt["test"]["mae"] == pytest.approx(ma["test"]["mae"], rel=5e-3)
        assert mt["trained_together"]["members"] == 2
        assert "trained_together" not in ma
        load_model(t / "model.pt")  # validated, weights_only
    assert together["ensemble"]["seeds"] == apart["ensemble"]["seeds"] == [5, 6]
    assert together["test"]["mae"] == pytest.approx(apart["test"]["mae"], rel=5e-3)
    assert (tmp_path / "together" / "test_predictions.csv").exists()
    # resumed: the finished members are kept, nothing is retrained
    before = (tmp_path / "together" / "members" / "0" / "model.pt").stat().st_mtime_ns
    again = _config(
        perovskites_150, tmp_path / "together", cache_root, members_together=True, resume=True
    )
    finetune(again)
    assert (tmp_path / "together" / "members" / "0" / "model.pt").stat().st_mtime_ns == before


def test_runs_of_other_data_and_starts_train_together(perovskites_150, cache_root, tmp_path):
    """Single runs with their own splits and seeds (not an ensemble): each folder is a finished
    single run whose metrics match the run trained alone."""
    configs = [
        _config(perovskites_150, tmp_path / f"run{s}", cache_root, ensemble=1, seed=s, epochs=1)
        for s in (1, 2)
    ]
    together = finetune_together(configs)
    alone = finetune(
        _config(perovskites_150, tmp_path / "alone", cache_root, ensemble=1, seed=2, epochs=1)
    )
    assert [m["trained_together"]["members"] for m in together] == [2, 2]
    assert together[0]["test"]["mae"] != together[1]["test"]["mae"]
    assert together[1]["crystals"] == alone["crystals"]
    assert together[1]["test"]["mae"] == pytest.approx(alone["test"]["mae"], rel=5e-3)
    for config in configs:
        assert not (Path(config.out) / "member_predictions.npz").exists()
        assert (Path(config.out) / "model.pt").is_file()


def test_mixed_settings_refused_before_any_folder(perovskites_150, cache_root, tmp_path):
    configs = [
        _config(perovskites_150, tmp_path / "a", cache_root, ensemble=1, epochs=1),
        _config(perovskites_150, tmp_path / "b", cache_root, ensemble=1, epochs=2),
    ]
    with pytest.raises(ValueError, match="same epochs"):
        finetune_together(configs)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_members_together_option(perovskites_150, tmp_path, capsys):
    """The CLI option comes from the config field; early stopping is refused in one line."""
    args = build_parser().parse_args(
        ["finetune", "x.csv", "--target", "y", "--out", "o", "--members-together"]
    )
    assert args.members_together is True
    args = build_parser().parse_args(["bench", "--out", "o", "--members-together"])
    assert args.members_together is True
    code = main(
        [
            "finetune",
            str(perovskites_150),
            "--target",
            "e_form",
            "--out",
            str(tmp_path / "run"),
            "--from-scratch",
            "--ensemble",
            "2",
            "--members-together",
            "--early-stopping",
            "3",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no early stopping" in err[0]
    assert not (tmp_path / "run").exists()
