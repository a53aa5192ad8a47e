"""`crystaltwins bench --members-together`: a task's seeds x {CT, scratch} in one loop."""

from __future__ import annotations

import json

import pytest

from crystaltwins.evaluation.bench import run_bench


@pytest.mark.slow
def test_bench_members_together(perovskite_subset, cache_root, tmp_path):
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "perovskites.csv.gz").symlink_to(perovskite_subset)
    kwargs = dict(
        tasks=["perovskites"],
        seeds=2,
        preset="smoke",
        pretrained="crystal-twins",
        cache_root=str(cache_root),
        accelerator="cpu",
        devices="1",
        members_together=True,
    )
    results = run_bench(data_root, tmp_path / "out", **kwargs)
    row = results["tasks"][0]
    assert len(row["scratch"]["values"]) == len(row["ct"]["values"]) == 2
    runs = sorted((tmp_path / "out" / "runs" / "perovskites").glob("seed*/*/metrics.json"))
    assert len(runs) == 4
    metrics = [json.loads(p.read_text()) for p in runs]
    assert all(m["trained_together"]["members"] == 4 for m in metrics)
    assert sorted(m["init"] == "scratch" for m in metrics) == [False, False, True, True]
    assert len({m["test"]["mae"] for m in metrics}) == 4  # four different runs
    # every run folder is complete: a second call reuses them all
    again = run_bench(data_root, tmp_path / "out", **kwargs)
    assert again["tasks"][0]["ct"]["values"] == row["ct"]["values"]
