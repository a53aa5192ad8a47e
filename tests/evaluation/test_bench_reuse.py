"""A benchmark reuses a finished run only when it was made with the settings the benchmark would
use now; otherwise it stops with one line naming the differences (nothing changed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from crystaltwins.evaluation.bench import (
    PRESETS,
    BenchConfig,
    BenchContext,
    _finetune_config,
    finetune_for_bench,
    pretrain_for_bench,
)
from crystaltwins.evaluation.tasks import TASKS
from crystaltwins.training.common import write_config


def _context(tmp_path: Path, preset: str = "smoke", **changes: int) -> BenchContext:
    config = BenchConfig(out=str(tmp_path / "out"), data_root=str(tmp_path), preset=preset)
    return BenchContext(config, replace(PRESETS[preset], **changes), [TASKS["perovskites"]])


def _finished_finetune(ctx: BenchContext) -> Path:
    """A finished scratch run of perovskites seed 0, written as the benchmark writes it."""
    config = _finetune_config(ctx, TASKS["perovskites"], 0, "scratch", None)
    out = Path(config.out)
    write_config(out, config)
    (out / "metrics.json").write_text(json.dumps({"test": {"mae": 0.5}}))
    return out


def test_a_finished_run_of_the_same_settings_is_reused(tmp_path) -> None:
    ctx = _context(tmp_path)
    _finished_finetune(ctx)
    metrics = finetune_for_bench(_context(tmp_path), TASKS["perovskites"], 0, "scratch", None)
    assert metrics == {"test": {"mae": 0.5}}


@pytest.mark.parametrize(
    ("preset", "changes", "named"),
    [
        ("smoke", {"finetune_epochs": 3}, "epochs: 2 -> 3"),
        ("cpu", {}, "epochs: 2 -> 40"),
        ("smoke", {"finetune_lr": 0.01}, "lr: 0.001 -> 0.01"),
    ],
)
def test_a_finished_run_of_other_settings_is_refused(tmp_path, preset, changes, named) -> None:
    out = _finished_finetune(_context(tmp_path))
    before = {p: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError) as refused:
        finetune_for_bench(
            _context(tmp_path, preset, **changes), TASKS["perovskites"], 0, "scratch", None
        )
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{out}: holds a finished run")
    assert named in message and "--overwrite" in message and "another --out" in message
    assert {p: p.read_bytes() for p in out.iterdir()} == before  # nothing changed


def test_a_finished_pretraining_of_other_settings_is_refused(tmp_path, monkeypatch) -> None:
    corpus = [tmp_path / "corpus.csv.gz"]
    out = tmp_path / "out" / "pretrain" / "rp_am_em"
    trained = []

    def pretrain(config):  # what a finished run leaves: its config.yaml and model.pt
        trained.append(config)
        write_config(Path(config.out), config)
        (Path(config.out) / "model.pt").write_bytes(b"weights")
        return Path(config.out) / "model.pt"

    monkeypatch.setattr("crystaltwins.training.pretrain.pretrain", pretrain)

    def run(ctx: BenchContext) -> Path:
        return pretrain_for_bench(ctx, corpus, "rp,am,em", "rp_am_em", exclude_test=False)

    assert run(_context(tmp_path)) == out / "model.pt" and len(trained) == 1
    assert run(_context(tmp_path)) == out / "model.pt" and len(trained) == 1  # reused
    with pytest.raises(ValueError, match=r"rp_am_em: holds a finished run .*epochs: 1 -> 2"):
        run(_context(tmp_path, pretrain_epochs=2))
    assert len(trained) == 1


@pytest.mark.slow
def test_bench_refuses_a_folder_of_another_preset_or_tasks(perovskite_subset, tmp_path, capsys):
    """End to end: a smoke benchmark, then the same ``--out`` with more fine-tuning epochs, or
    with another seed's test crystals to exclude from pre-training."""
    from crystaltwins.cli.main import main

    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "perovskites.csv.gz").symlink_to(perovskite_subset)
    out = tmp_path / "results"
    argv = [
        "bench", "--data-root", str(data_root), "--out", str(out), "--tasks", "perovskites",
        "--seeds", "1", "--preset", "smoke", "--exclude-test", "--accelerator", "cpu",
        "--devices", "1", "--cache-root", str(tmp_path / "caches"),
    ]  # fmt: skip
    assert main(argv) == 0
    results = (out / "results.json").read_bytes()
    assert main(argv) == 0  # the same settings: every run reused
    capsys.readouterr()
    assert main([*argv[:-2], "--cache-root", str(tmp_path / "caches"), "--seeds", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "pretrain/rp_am_em: holds a finished run" in line
    assert "excluded test crystals of other tasks or seeds: 100 -> " in line
    smoke = PRESETS["smoke"]
    PRESETS["smoke"] = replace(smoke, finetune_epochs=3)
    try:
        assert main(argv) == 2
    finally:
        PRESETS["smoke"] = smoke
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "runs/perovskites/seed0/scratch: holds a finished run" in line
    assert "epochs: 2 -> 3" in line and "--overwrite" in line
    assert (out / "results.json").read_bytes() == results  # nothing changed
