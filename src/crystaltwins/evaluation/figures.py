"""The paper's figures from benchmark runs: the ablation bar chart (Fig. 2), t-SNE maps (Fig. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crystaltwins.evaluation.plots import _save, reduce_2d, side_by_side_maps


def ablation_chart(
    ablation: dict[str, dict[str, tuple[float, float]]],
    path: Path,
    baseline: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Grouped bars (paper Fig. 2): per task, the test MAE (mean ± std over seeds) of each
    pre-training variant, relative to ``baseline`` (CGCNN from scratch: below 1 = pre-training
    helps, the dashed line), or to the mean over the variants when no baseline is given."""
    import matplotlib.pyplot as plt

    variants = list(ablation)
    tasks = sorted({t for per in ablation.values() for t in per})
    if baseline is not None:
        tasks = [t for t in tasks if t in baseline]
        scale = np.array([baseline[t][0] for t in tasks])
        ylabel = "test MAE / CGCNN from scratch"
    else:
        scale = np.array([np.mean([ablation[v][t][0] for v in variants]) for t in tasks])
        ylabel = "test MAE / mean over variants"
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    width = 0.8 / max(1, len(variants))
    lows, highs = [1.0], [1.0]
    for k, variant in enumerate(variants):
        means = np.array([ablation[variant][t][0] for t in tasks]) / scale
        stds = np.array([ablation[variant][t][1] for t in tasks]) / scale
        ax.bar(np.arange(len(tasks)) + k * width, means, width, yerr=stds, capsize=3, label=variant)
        lows.append(float((means - stds).min()))
        highs.append(float((means + stds).max()))
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    margin = 0.05 * (max(highs) - min(lows)) + 0.01
    ax.set_ylim(min(lows) - margin, max(highs) + margin)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(variants) - 1) / 2)
    ax.set_xticklabels(tasks, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title("Augmentation ablation: pre-training variants (lower is better)")
    ax.legend()
    return _save(fig, path)


def perovskite_tsne(ctx: Any, path: Path, part: str = "seed0") -> Path:
    """t-SNE of the perovskites test crystals' embeddings: supervised CGCNN vs CT fine-tuned,
    of the runs in ``runs/perovskites/<part>`` (the first seed's or fold's)."""
    from crystaltwins.data.dataset import CrystalGraphDataset
    from crystaltwins.evaluation.report import predict_embeddings
    from crystaltwins.models.checkpoint import load_model

    panels = []
    color = None
    for method, title in (("scratch", "CGCNN (supervised)"), ("ct", "Crystal Twins (fine-tuned)")):
        run = ctx.out / "runs" / "perovskites" / part / method
        bundle = load_model(run / "model.pt")
        ids = [
            line.split(",")[0]
            for line in (run / "test_predictions.csv").read_text().splitlines()[1:]
        ]
        from crystaltwins.data.sources import prepare_caches

        (cache,) = prepare_caches(
            [ctx.data_root / "perovskites.csv.gz"],
            bundle.graph_settings,
            bundle.featurizer,
            ctx.cache_root,
            log=None,
        )
        position = {str(i): k for k, i in enumerate(cache.ids.tolist())}
        dataset = CrystalGraphDataset(cache, [position[i] for i in ids])
        vectors = predict_embeddings(bundle.encoder, dataset)
        color = cache.labels(["e_form"])[dataset.indices, 0]
        panels.append((title, reduce_2d(vectors, "tsne", 0)))  # t-SNE's own seed
    return side_by_side_maps(panels, color, path, "formation energy (eV/cell)")
