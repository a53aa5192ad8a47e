"""Figures: parity plot, learning curves, and 2-D maps of crystal embeddings (paper Fig. 3)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def parity_plot(
    target: np.ndarray, prediction: np.ndarray, path: str | os.PathLike, label: str = "target"
) -> Path:
    """Predicted vs true values with the y = x line and the MAE in the title."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(target, prediction, s=6, alpha=0.5, edgecolors="none")
    lo = float(min(np.min(target), np.min(prediction))) if len(target) else 0.0
    hi = float(max(np.max(target), np.max(prediction))) if len(target) else 1.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    mae = (
        float(np.mean(np.abs(np.asarray(prediction) - np.asarray(target))))
        if len(target)
        else float("nan")
    )
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(f"test set: MAE {mae:.4g} (n = {len(target)})")
    return _save(fig, path)


def learning_curves(metrics_csv: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Train and validation loss (and MAE, when logged) per epoch from a run's ``history.csv``."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.exists():
        return None
    rows = list(csv.DictReader(metrics_csv.open()))
    columns = [
        c
        for c in ("train_loss_epoch", "train_loss", "val_loss", "train_mae", "val_mae")
        if rows and c in rows[0]
    ]
    panels = ["loss"] + (["MAE"] if any(c.endswith("mae") for c in columns) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    axes = axes[0]
    for column in columns:
        points = [(int(r["epoch"]), float(r[column])) for r in rows if r.get(column)]
        if not points:
            continue
        epochs, values = zip(*sorted(dict(points).items()), strict=True)
        ax = axes[1] if column.endswith("mae") else axes[0]
        ax.plot(epochs, values, marker=".", label=column)
    for ax, name in zip(axes, panels, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        if ax.lines:
            ax.legend()
    return _save(fig, path)


def check_map_output(path: str | os.PathLike) -> None:
    """Refuse (``ValueError``) a map path whose image or ``.csv`` of coordinates exists and is
    not an earlier map of ``crystaltwins plot`` (a pair whose CSV starts ``id,x,y``)."""
    image, table = Path(path), Path(path).with_suffix(".csv")
    if image.is_dir():
        raise ValueError(f"{image}: is a folder; give a file name, e.g. {image / 'map.png'}")
    if not image.exists() and not table.exists():
        return
    earlier = False
    if table.is_file():
        with open(table, newline="", errors="replace") as handle:
            earlier = next(csv.reader(handle), [])[:3] == ["id", "x", "y"]
    if earlier and image.exists():  # the image too must be one matplotlib wrote
        with open(image, "rb") as handle:
            earlier = b"atplotlib" in handle.read(8192)
    if not earlier:
        raise ValueError(
            f"{image}: it or {table.name} exists and is not an earlier map of crystaltwins; "
            "nothing was written; give a new file name (or remove those files yourself)"
        )


def reduce_2d(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``(N, D)`` embeddings → ``(N, 2)`` with t-SNE, UMAP or PCA."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(vectors) - 1) / 3)))
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(vectors)
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise ImportError(
                "UMAP needs the umap-learn package: pip install 'crystaltwins[umap]'"
            ) from error
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)
    raise ValueError(f"unknown method {method!r}; choose tsne, umap or pca")


def embedding_map(
    coordinates: np.ndarray,
    color: np.ndarray | None,
    path: str | os.PathLike,
    color_label: str = "",
    title: str = "",
    ax: plt.Axes | None = None,
) -> Path | None:
    """Scatter of 2-D coordinates coloured by a property, with a colour bar."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
    else:
        fig = ax.figure
    if color is not None and np.isfinite(color).any():
        points = ax.scatter(
            coordinates[:, 0], coordinates[:, 1], c=color, s=6, cmap="viridis", edgecolors="none"
        )
        fig.colorbar(points, ax=ax, label=color_label)
    else:
        ax.scatter(coordinates[:, 0], coordinates[:, 1], s=6, edgecolors="none")
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title(title)
    return _save(fig, path) if own else None


def side_by_side_maps(
    panels: list[tuple[str, np.ndarray]],
    color: np.ndarray,
    path: str | os.PathLike,
    color_label: str,
) -> Path:
    """Several 2-D maps (title, coordinates) next to each other, one shared colouring."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5))
    for ax, (title, coordinates) in zip(np.atleast_1d(axes), panels, strict=True):
        embedding_map(coordinates, color, path, color_label, title, ax=ax)
    return _save(fig, path)
