"""The ablation figure and table from benchmark results."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg

from crystaltwins.evaluation.bench import _ablation_md
from crystaltwins.evaluation.figures import ablation_chart

ABLATION = {
    "RP": {"perovskites": (0.137, 0.001), "gvrh": (0.106, 0.006)},
    "AM+EM": {"perovskites": (0.141, 0.003), "gvrh": (0.106, 0.010)},
    "RP+AM+EM": {"perovskites": (0.140, 0.003), "gvrh": (0.106, 0.008)},
}
SCRATCH = {"perovskites": (0.138, 0.008), "gvrh": (0.107, 0.006)}


def test_ablation_chart_relative_to_scratch(tmp_path: Path) -> None:
    path = ablation_chart(ABLATION, tmp_path / "ablation.png", baseline=SCRATCH)
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # without a baseline it still draws (relative to the mean over variants)
    assert ablation_chart(ABLATION, tmp_path / "plain.png").exists()


def test_ablation_table_lists_scratch_and_every_variant() -> None:
    results = {
        "ablation": ABLATION,
        "tasks": [{"task": t, "scratch": {"mean": m, "std": s}} for t, (m, s) in SCRATCH.items()],
    }
    table = _ablation_md(results)
    assert "| task | CGCNN (scratch) | CT RP | CT AM+EM | CT RP+AM+EM |" in table
    assert "| perovskites | 0.1380 ± 0.0080 | 0.1370 ± 0.0010 | 0.1410 ± 0.0030 |" in table
    assert table.index("| gvrh |") < table.index("| perovskites |")
    assert "![ablation](ablation.png)" in table
