"""`crystaltwins bench --encoders`: each encoder from scratch on the same splits, CT for the
first or (``--pretrain-all``) for every one, a column each beside the paper's Table 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from crystaltwins.evaluation.bench import encoder_ranking, ranking_sentence, run_bench
from crystaltwins.evaluation.tasks import TASKS
from crystaltwins.models.checkpoint import load_model
from crystaltwins.models.registry import ENCODERS, name_of


def _data_root(perovskite_subset: Path, tmp_path: Path) -> Path:
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "perovskites.csv.gz").symlink_to(perovskite_subset)
    return data_root


def _kwargs(cache_root: Path, **more: object) -> dict:
    return dict(
        tasks=["perovskites"],
        seeds=1,
        preset="smoke",
        cache_root=str(cache_root),
        accelerator="cpu",
        devices="1",
        **more,
    )


def _encoder_of(model: Path) -> str:
    return name_of(ENCODERS, "encoder", load_model(model).encoder)


def _tested_ids(run: Path) -> set[str]:
    with open(run / "test_predictions.csv", newline="") as handle:
        return {row["id"] for row in csv.DictReader(handle)}


def test_bench_trains_each_encoder_on_the_same_split(perovskite_subset, cache_root, tmp_path):
    out = tmp_path / "results"
    results = run_bench(
        _data_root(perovskite_subset, tmp_path),
        out,
        **_kwargs(cache_root, encoders=["cgcnn", "gin"], pretrained="crystal-twins"),
    )
    runs = out / "runs" / "perovskites" / "seed0"
    # the default encoder keeps the folders of earlier benchmarks; GIN's carry its name
    assert sorted(p.name for p in runs.iterdir()) == ["ct", "scratch", "scratch_gin"]
    assert _encoder_of(runs / "scratch" / "model.pt") == "cgcnn"
    assert _encoder_of(runs / "scratch_gin" / "model.pt") == "gin"
    assert _tested_ids(runs / "scratch") == _tested_ids(runs / "scratch_gin")  # same split
    assert results["encoders"] == ["cgcnn", "gin"] and results["ct_encoders"] == ["cgcnn"]
    (row,) = results["tasks"]
    gin_mae = json.loads((runs / "scratch_gin" / "metrics.json").read_text())["test"]["mae"]
    assert row["encoders"]["gin"]["scratch"]["values"] == [gin_mae]
    assert "ct" not in row["encoders"]["gin"]  # CT only for the pre-trained model's encoder
    assert row["encoders"]["cgcnn"]["ct"]["values"] == row["ct"]["values"]
    assert row["paper_baselines"] == TASKS["perovskites"].paper_baselines
    report = (out / "results.md").read_text()
    header = next(line for line in report.splitlines() if "GIN (ours)" in line)
    for column in ("CGCNN (ours)", "CT-CGCNN (ours)", "paper CGCNN", "GIN (ours)", "paper GIN"):
        assert f"| {column} |" in header
    assert "CT-GIN" not in header
    # the ranking sentence follows from the numbers
    ours = sorted(["cgcnn", "gin"], key=lambda e: row["encoders"][e]["scratch"]["mean"])
    (compared,) = results["encoder_ranking"]["tasks"]
    assert compared["ours"] == ours and compared["paper"] == ["cgcnn", "gin"]
    assert ranking_sentence(results["encoder_ranking"]) in report
    assert ("differs" in report) == (ours != ["cgcnn", "gin"])


@pytest.mark.parametrize("together", [False, True], ids=["alone", "members-together"])
def test_bench_pretrain_all_pretrains_each_encoder(
    perovskite_subset, cache_root, tmp_path, together
):
    """With --members-together each architecture's runs (scratch and CT) form one stack: a
    pre-trained GIN run goes with GIN's scratch run, not with CGCNN's."""
    out = tmp_path / "results"
    results = run_bench(
        _data_root(perovskite_subset, tmp_path),
        out,
        **_kwargs(
            cache_root, encoders=["cgcnn", "gin"], pretrain_all=True, members_together=together
        ),
    )
    pretrained = sorted((out / "pretrain").glob("*/model.pt"))
    assert [p.parent.name for p in pretrained] == ["rp_am_em", "rp_am_em_gin"]
    assert [_encoder_of(p) for p in pretrained] == ["cgcnn", "gin"]
    runs = out / "runs" / "perovskites" / "seed0"
    assert sorted(p.name for p in runs.iterdir()) == ["ct", "ct_gin", "scratch", "scratch_gin"]
    assert _encoder_of(runs / "ct_gin" / "model.pt") == "gin"
    (row,) = results["tasks"]
    assert row["encoders"]["gin"]["ct"]["values"]
    assert "| CT-GIN (ours) |" in (out / "results.md").read_text()
    if together:
        for run in ("ct", "scratch", "ct_gin", "scratch_gin"):
            metrics = json.loads((runs / run / "metrics.json").read_text())
            assert metrics["trained_together"]["members"] == 2, run


def test_unknown_encoder_exits_2_before_any_work(tmp_path, capsys):
    from crystaltwins.cli.main import main

    (tmp_path / "data").mkdir()
    out = tmp_path / "results"
    args = ["bench", "--data-root", str(tmp_path / "data"), "--out", str(out)]
    assert main([*args, "--encoders", "cgcnn", "schnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown encoder 'schnet'" in err and "gin" in err
    assert main([*args, "--encoders", "gin", "gin"]) == 2
    assert "given more than once" in capsys.readouterr().err
    assert not out.exists()


def test_pretrained_encoder_must_be_among_the_encoders(perovskite_subset, cache_root, tmp_path):
    out = tmp_path / "results"
    with pytest.raises(ValueError, match="holds a cgcnn encoder, which is not among --encoders"):
        run_bench(
            _data_root(perovskite_subset, tmp_path),
            out,
            **_kwargs(cache_root, encoders=["gin"], pretrained="crystal-twins"),
        )
    assert not out.exists()


def _row(task: str, ours: dict[str, float], paper: dict[str, float]) -> dict:
    return {
        "task": task,
        "paper_baselines": paper,
        "encoders": {e: {"scratch": {"mean": m}} for e, m in ours.items()},
    }


def test_ranking_names_the_tasks_where_ours_differs_from_the_paper():
    paper = {"gin": 0.38, "cgcnn": 0.057, "ogcnn": 0.056}
    rows = [
        _row("perovskites", {"cgcnn": 0.10, "gin": 0.05, "ogcnn": 0.2}, paper),  # GIN first
        _row("gvrh", {"cgcnn": 0.2, "gin": 0.3, "ogcnn": 0.1}, paper),  # the paper's order
        {"task": "lanthanides", "skipped": True},
    ]
    ranking = encoder_ranking(rows, ["cgcnn", "gin", "ogcnn"])
    assert [t["same"] for t in ranking["tasks"]] == [False, True]
    assert ranking["mean_rank"]["ours"] == {"cgcnn": 2.0, "gin": 2.0, "ogcnn": 2.0}
    assert ranking["mean_rank"]["paper"] == {"cgcnn": 2.0, "gin": 3.0, "ogcnn": 1.0}
    sentence = ranking_sentence(ranking)
    assert "differs from the paper's on 1 of 2 tasks" in sentence
    assert "perovskites (ours GIN < CGCNN < OGCNN, paper OGCNN < CGCNN < GIN)" in sentence
    assert "It is the paper's on gvrh." in sentence
    # an encoder the paper does not have is left out of the comparison
    alone = encoder_ranking([_row("hoip", {"cgcnn": 0.1, "mine": 0.2}, paper)], ["cgcnn", "mine"])
    assert alone["tasks"] == [] and ranking_sentence(alone) == ""


def test_members_together_stacks_each_architecture(perovskite_subset, cache_root, tmp_path):
    """--members-together trains the CGCNN runs in one loop, the GIN runs in another and the
    OGCNN runs in a third (one stack per architecture)."""
    out = tmp_path / "results"
    run_bench(
        _data_root(perovskite_subset, tmp_path),
        out,
        **_kwargs(
            cache_root,
            encoders=["cgcnn", "gin", "ogcnn"],
            pretrained="crystal-twins",
            members_together=True,
        ),
    )
    runs = out / "runs" / "perovskites" / "seed0"
    metrics = {p.name: json.loads((p / "metrics.json").read_text()) for p in runs.iterdir()}
    assert sorted(metrics) == ["ct", "scratch", "scratch_gin", "scratch_ogcnn"]
    assert metrics["ct"]["trained_together"]["members"] == 2
    assert metrics["scratch"]["trained_together"]["members"] == 2
    assert metrics["scratch_gin"]["trained_together"]["members"] == 1
    assert metrics["scratch_ogcnn"]["trained_together"]["members"] == 1
    assert _encoder_of(runs / "scratch_gin" / "model.pt") == "gin"
    assert _encoder_of(runs / "scratch_ogcnn" / "model.pt") == "ogcnn"
