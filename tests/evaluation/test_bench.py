"""`crystaltwins bench` end to end at smoke size: results, resume, test exclusion, t-SNE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crystaltwins.evaluation.bench import run_bench


def test_bench_smoke_runs_resumes_and_reports(perovskite_subset, tmp_path, capsys):
    cache_root = tmp_path / "caches"  # its own: which caches the bench builds is checked
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "perovskites.csv.gz").symlink_to(perovskite_subset)
    out = tmp_path / "results"
    kwargs = dict(
        tasks=["perovskites", "lanthanides"],
        seeds=1,
        preset="smoke",
        exclude_test=True,
        tsne=True,
        cache_root=str(cache_root),
        accelerator="cpu",
        devices="1",
    )
    results = run_bench(data_root, out, **kwargs)
    printed = capsys.readouterr().out
    # progress across the whole run: runs done, ETA, task, seed, method, epoch, validation MAE
    assert "perovskites seed 0 scratch: epoch 2/2, val MAE" in printed
    assert "perovskites seed 0 ct: epoch 2/2" in printed and "ETA" in printed
    rows = {row["task"]: row for row in results["tasks"]}
    assert rows["lanthanides"].get("skipped")  # listed, never run
    perovskites = rows["perovskites"]
    assert perovskites["paper_cgcnn"] == 0.057 and perovskites["paper_ct"] == 0.046
    assert perovskites["scratch"]["values"] and perovskites["ct"]["values"]
    assert "excluded" in results["corpus_description"]
    excluded = json.loads((out / "pretrain" / "rp_am_em" / "excluded_test_ids.json").read_text())
    assert len(excluded) == 100  # the whole 20% test split of the smoke subset's 500 crystals
    report = (out / "results.md").read_text()
    assert report.count("| perovskites |") == 1
    assert report.count(" (1 run) |") == 2 and "± 0.0000" not in report  # one seed: no spread
    assert report.startswith("# Pipeline check (smoke preset): these numbers mean nothing")
    # the paper's gain over the same tasks (perovskites: 0.057 -> 0.046), beside its claim
    assert "(paper, the same tasks: +19.3%; its claim: +15.6% over 7 tasks)" in report
    # only the first 500 rows of the data were used, and only they got a graph cache
    caches = [json.loads(p.read_text()) for p in cache_root.glob("*/manifest.json")]
    assert caches and all(m["crystals"] == 500 for m in caches)
    assert {Path(m["key"]["source"]).parent for m in caches} == {(out / "data").resolve()}
    assert (out / "tsne_perovskites.png").stat().st_size > 10_000
    # A second call reuses every finished run: same numbers.
    again = run_bench(data_root, out, **kwargs)
    assert again["tasks"][0]["ct"]["values"] == perovskites["ct"]["values"]


def test_bench_matbench_protocol_runs_folds(perovskite_subset, cache_root, tmp_path, capsys):
    """--protocol matbench: 'seeds' are folds; each run tests on its matbench fold; the report
    says folds and gives the leaderboard's numbers (comparable only over all 5 uncapped folds)."""
    import csv

    import pytest
    from sklearn.model_selection import KFold

    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "perovskites.csv.gz").symlink_to(perovskite_subset)
    kwargs = dict(
        tasks=["perovskites"],
        preset="smoke",
        pretrained="crystal-twins",
        cache_root=str(cache_root),
        accelerator="cpu",
        devices="1",
        protocol="matbench",
    )
    with pytest.raises(ValueError, match="runs folds 0-4"):
        run_bench(data_root, tmp_path / "bad", seeds=3, first_seed=3, **kwargs)
    for refused in ("exclude_test", "ablation"):  # they act on a pre-training not run here
        with pytest.raises(ValueError, match="--pretrained uses a model as it is"):
            run_bench(data_root, tmp_path / "bad", seeds=1, **{refused: True}, **kwargs)
    # the t-SNE map of the first fold's runs (it looked for seed0 and lost the tables)
    results = run_bench(
        data_root,
        tmp_path / "out",
        seeds=1,
        first_seed=3,
        tsne=True,
        lr_schedule="cosine",
        encoder_lr_factor=0.5,
        **kwargs,
    )
    assert (tmp_path / "out" / "tsne_perovskites.png").stat().st_size > 10_000
    run_config = tmp_path / "out" / "runs" / "perovskites" / "fold3" / "ct" / "config.yaml"
    assert "lr_schedule: cosine" in run_config.read_text()  # bench --lr-schedule reaches the runs
    assert "encoder_lr_factor: 0.5" in run_config.read_text()  # so does --encoder-lr-factor
    assert results["preset"]["encoder_lr_factor"] == 0.5 and results["encoder_lr_factor"] == 0.5
    with pytest.raises(ValueError, match="--encoder-lr-factor must be a number >= 0"):
        run_bench(data_root, tmp_path / "bad", seeds=1, encoder_lr_factor=-1.0, **kwargs)
    assert results["protocol"].startswith("matbench")
    assert "perovskites fold 3 scratch: epoch" in capsys.readouterr().out
    assert results["tasks"][0]["matbench_leaderboard"]["CGCNN"] == 0.0452
    report = (tmp_path / "out" / "results.md").read_text()
    assert (
        "mean ± std over folds" in report
        and "Splits: matbench (matbench v0.1 folds: KFold(5" in report
    )
    assert results["wall_minutes"] > 0  # the fold runs' training time is counted
    assert "(learning rates: cosine)" in report
    assert "(pre-trained encoder at 0.5x the head's learning rate)" in report
    # one fold of a capped preset: the leaderboard is given, said not comparable
    assert "matbench v0.1 leaderboard (not comparable with this run" in report
    assert "coGN 0.0269" in report and "on the same 5 folds" not in report
    run = tmp_path / "out" / "runs" / "perovskites" / "fold3"
    with open(run / "scratch" / "test_predictions.csv", newline="") as handle:
        tested = {row["id"] for row in csv.DictReader(handle)}
    import gzip

    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)][:500]  # the smoke preset's subset
    fold = list(KFold(5, shuffle=True, random_state=18012019).split(ids))[3][1]
    assert tested <= {ids[k] for k in fold}  # the smoke preset caps the test part at 100
    assert len(tested) == 100


def test_bench_names_the_tasks_whose_property_a_given_start_already_learned():
    """mp-multi and mp-multi-33k learned the MP formation energy, band gap and Fermi energy,
    mp-eform the formation energy; a self-supervised encoder learned no label."""
    from crystaltwins.evaluation.bench import tasks_with_learned_labels
    from crystaltwins.evaluation.tasks import TASKS
    from crystaltwins.models.checkpoint import resolve_model_path

    tasks = list(TASKS.values())
    assert tasks_with_learned_labels(resolve_model_path("mp-multi"), tasks) == [
        "mp_formation_energy", "mp_band_gap", "mp_fermi_energy"
    ]  # fmt: skip
    assert tasks_with_learned_labels(resolve_model_path("mp-multi-33k"), tasks) == [
        "mp_formation_energy", "mp_band_gap", "mp_fermi_energy"
    ]  # fmt: skip
    assert tasks_with_learned_labels(resolve_model_path("mp-eform"), tasks) == [
        "mp_formation_energy"
    ]
    assert tasks_with_learned_labels(resolve_model_path("crystal-twins"), tasks) == []


def test_bench_warns_when_a_given_start_learned_the_labels_of_its_test_crystals(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """mp-multi-33k learned most mp36k labels: a warning counts the test crystals it learned;
    mp-multi held them out: the note says "other crystals". (The test ids here are the first
    2,000 crystals of mp36k, standing for a benchmark's test set.)"""
    import csv
    import gzip
    import itertools
    from types import SimpleNamespace

    from crystaltwins.evaluation import bench
    from crystaltwins.evaluation.tasks import TASKS
    from crystaltwins.models.checkpoint import load_model, resolve_model_path
    from crystaltwins.models.provenance import seen_ids

    csv.field_size_limit(2**31 - 1)
    with gzip.open(data_dir / "mp36k.csv.gz", "rt", newline="") as handle:
        ids = [row["id"] for row in itertools.islice(csv.DictReader(handle), 2_000)]
    tasks = [TASKS["mp_band_gap"], TASKS["perovskites"]]
    counts = bench.learned_test_labels(
        resolve_model_path("mp-multi-33k"), tasks, {"mp_band_gap": ids}
    )
    assert list(counts) == ["mp_band_gap"] and counts["mp_band_gap"][1] == 2_000
    assert 1_800 < counts["mp_band_gap"][0] < 2_000

    ctx = SimpleNamespace(tasks=tasks, seeds=[0])
    monkeypatch.setattr(bench, "_test_ids", lambda task, seed, ctx: ids)
    bench._note_learned_labels("mp-multi-33k", resolve_model_path("mp-multi-33k"), ctx)
    printed = capsys.readouterr().out
    assert printed.startswith("warning: --pretrained mp-multi-33k learned the labels of ")
    assert "of the 2,000 test crystals of mp_band_gap: its CT results there are not" in printed
    learned_by_multi = seen_ids(load_model("mp-multi").info, ids, "mp36k.csv.gz") or []
    test_ids = sorted(set(ids) - set(learned_by_multi))  # as bench's test crystals for mp-multi
    monkeypatch.setattr(bench, "_test_ids", lambda task, seed, ctx: test_ids)
    bench._note_learned_labels("mp-multi", resolve_model_path("mp-multi"), ctx)
    printed = capsys.readouterr().out
    assert printed.startswith("note: --pretrained mp-multi learned the property of mp_band_gap on")
    assert "warning" not in printed


def test_results_json_stays_strict_json_with_a_diverged_seed(tmp_path, monkeypatch):
    """A NaN MAE (a diverged seed) is written null: a strict JSON parser reads the file."""
    from types import SimpleNamespace

    import crystaltwins.evaluation.bench as bench

    monkeypatch.setattr(bench, "summarize", lambda results: "table\n")
    config = SimpleNamespace(ablation=False, tsne=False)
    ctx = SimpleNamespace(config=config, tasks=[], out=tmp_path, progress=print, seeds=range(1))
    nan = float("nan")
    bench._write_results(ctx, {"tasks": [{"ct": {"mean": nan, "values": [0.05, nan]}}]}, {})

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    loaded = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert loaded["tasks"][0]["ct"] == {"mean": None, "values": [0.05, None]}


def test_ablation_table_of_one_seed_shows_no_spread():
    from crystaltwins.evaluation.bench import _ablation_md

    results = {
        "ablation": {"RP": {"perovskites": (0.05, 0.0)}, "AM+EM": {"perovskites": (0.052, 0.0)}},
        "tasks": [{"task": "perovskites", "scratch": {"mean": 0.06, "std": 0.0, "values": [0.06]}}],
    }
    table = _ablation_md(results)
    assert "| perovskites | 0.0600 (1 run) | 0.0500 (1 run) | 0.0520 (1 run) |" in table
    assert "± 0.0000" not in table
