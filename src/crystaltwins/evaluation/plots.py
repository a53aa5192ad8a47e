"""Figures: parity plot, learning curves, and 2-D maps of crystal embeddings (paper Fig. 3)."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from crystaltwins.io.atomic import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def quantity_label(name: str, unit: str = "") -> str:
    """``"e_form (eV/cell)"``, or just the name when the unit is unknown."""
    return f"{name} ({unit})" if unit else name


def model_label(init: str) -> str:
    """How a fine-tuned model is named on figures, from its ``init``: ``"scratch"``, a shipped
    model's name, or the file it started from (a run folder's ``model.pt`` by its folder)."""
    from crystaltwins.models.pretrained import (
        LEGACY_DEFAULT,
        SHIPPED_MODELS,
        recorded_model_name,
        shipped_model_path,
    )

    if init == "scratch":
        return "CGCNN from scratch"
    init = recorded_model_name(init)  # "default" in a run made before it moved
    if init == LEGACY_DEFAULT or Path(init).name == shipped_model_path(LEGACY_DEFAULT).name:
        return "CT fine-tuned"
    if init in SHIPPED_MODELS:
        return f"fine-tuned from {init}"
    path = Path(init)
    return f"fine-tuned from {path.parent.name if path.name == 'model.pt' else path.name}"


def parity_figure(
    target: np.ndarray,
    prediction: np.ndarray,
    label: str = "target",
    unit: str = "",
    model: str = "",
    transform: str = "none",
) -> plt.Figure:
    """The figure of :func:`parity_plot` (not saved)."""
    from crystaltwins.evaluation.tasks import metric_unit

    unit = metric_unit(unit, transform)
    label = label if transform == "none" else f"{transform} {label}"
    target = np.asarray(target, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.scatter(target, prediction, s=6, alpha=0.5, edgecolors="none")
    lo = float(min(np.min(target), np.min(prediction))) if len(target) else 0.0
    hi = float(max(np.max(target), np.max(prediction))) if len(target) else 1.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    mae = float(np.mean(np.abs(prediction - target))) if len(target) else float("nan")
    spread = float(np.sum((target - target.mean()) ** 2)) if len(target) else 0.0
    r2 = 1.0 - float(np.sum((prediction - target) ** 2)) / spread if spread > 0 else float("nan")
    ax.set_xlabel(f"true {quantity_label(label, unit)}")
    ax.set_ylabel(f"predicted {quantity_label(label, unit)}")
    who = f"{model}, " if model else ""
    mae_text = f"{mae:.4g} {unit}".rstrip()
    ax.set_title(f"{who}test set (n = {len(target)})\nMAE {mae_text}, R² {r2:.3f}", fontsize=10)
    return fig


def parity_plot(
    target: np.ndarray,
    prediction: np.ndarray,
    path: str | os.PathLike,
    label: str = "target",
    unit: str = "",
    model: str = "",
    transform: str = "none",
) -> Path:
    """Predicted vs true values ``(N,)`` with the y = x line; the title names ``model`` (e.g.
    ``"CT fine-tuned"``), the MAE in ``unit`` and R². With a target ``transform`` the values are
    the transformed ones (``log10``), and so is the unit shown."""
    return _save(parity_figure(target, prediction, label, unit, model, transform), path)


#: How pre-training objectives are named on figures.
OBJECTIVE_NAMES = {"barlow_twins": "Barlow Twins", "simsiam": "SimSiam"}

#: Legend names of the columns of ``history.csv``.
CURVE_NAMES = {
    "train_loss": "training",
    "val_loss": "validation",
    "train_mae": "training",
    "val_mae": "validation",
}


def _history(metrics_csv: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``column -> (epochs, values)`` of a ``history.csv``; a column logged per step and per
    epoch (``train_loss_epoch``) counts as its epoch value."""
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for column in rows[0] if rows else []:
        name = column.removesuffix("_epoch")
        if name not in CURVE_NAMES or (name != column and name in (rows[0] or {})):
            continue
        points: dict[int, float] = {}
        for row in rows:
            try:
                points[int(float(row["epoch"]))] = float(row[column])
            except (KeyError, TypeError, ValueError):
                continue
        if points:
            epochs = sorted(points)
            curves[name] = (epochs, [points[e] for e in epochs])
    return curves


def learning_curves_figure(
    metrics_csv: str | os.PathLike,
    target: str = "",
    unit: str = "",
    loss_name: str = "loss",
    title: str = "",
    transform: str = "none",
) -> plt.Figure | None:
    """The figure of :func:`learning_curves` (not saved); ``None`` without a history."""
    from matplotlib.ticker import MaxNLocator

    from crystaltwins.evaluation.tasks import metric_unit

    unit = metric_unit(unit, transform)
    target = target if transform == "none" or not target else f"{transform} {target}"

    metrics_csv = Path(metrics_csv)
    if not metrics_csv.exists():
        return None
    curves = _history(metrics_csv)
    panels = [("loss", loss_name)]
    if any(name.endswith("_mae") for name in curves):
        panels.append(("mae", f"MAE of {quantity_label(target, unit)}" if target else "MAE"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False, layout="constrained"
    )
    for ax, (kind, ylabel) in zip(axes[0], panels, strict=True):
        for name, (epochs, values) in curves.items():
            if name.endswith(f"_{kind}"):
                ax.plot(
                    epochs,
                    values,
                    marker="." if len(epochs) < 40 else None,
                    label=CURVE_NAMES[name],
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def learning_curves(
    metrics_csv: str | os.PathLike,
    path: str | os.PathLike,
    target: str = "",
    unit: str = "",
    loss_name: str = "loss",
    title: str = "",
    transform: str = "none",
) -> Path | None:
    """Training and validation loss per epoch from a run's ``history.csv`` (fine-tuning or
    pre-training), and the MAE of ``target`` in ``unit`` when it was logged; ``None`` when the
    run has no history."""
    fig = learning_curves_figure(metrics_csv, target, unit, loss_name, title, transform)
    return None if fig is None else _save(fig, path)


#: Largest image searched whole for matplotlib's mark (a PDF names its producer at the end).
_MARK_SEARCH_BYTES = 64 * 2**20


def _written_with(image: Path, table: Path) -> bool:
    """Whether ``image`` is the map drawn with the coordinates ``table``: matplotlib's mark in
    it (PNG and SVG near the start, PDF anywhere), or, for formats that carry none (JPEG, TIFF),
    written within a minute of the table (``plot`` writes the two together)."""
    size = image.stat().st_size
    with open(image, "rb") as handle:
        head = handle.read(8192 if size > _MARK_SEARCH_BYTES else _MARK_SEARCH_BYTES)
    if b"atplotlib" in head:
        return True
    unmarked = head.startswith((b"\xff\xd8\xff", b"II*\x00", b"MM\x00*"))  # JPEG, TIFF
    return unmarked and abs(image.stat().st_mtime - table.stat().st_mtime) < 60


def check_map_output(path: str | os.PathLike) -> None:
    """Refuse (``ValueError``) a map path whose image or ``.csv`` of coordinates exists and is
    not an earlier map of ``crystaltwins plot`` (a pair whose CSV starts ``id,x,y``)."""
    image, table = Path(path), Path(path).with_suffix(".csv")
    if image.is_dir():
        raise ValueError(f"{image}: is a folder; give a file name, e.g. {image / 'map.png'}")
    from matplotlib.backend_bases import FigureCanvasBase

    kind = image.suffix.lower().lstrip(".")
    if kind not in FigureCanvasBase.get_supported_filetypes() or kind == "csv":
        raise ValueError(  # else Matplotlib named the format of our hidden temporary's name
            f"{image}: no picture format in the name; end it in .png, .pdf, .svg or .jpg; "
            "nothing was written"
        )
    if not image.exists() and not table.exists():
        return
    earlier = False
    if table.is_file():
        with open(table, newline="", errors="replace") as handle:
            earlier = next(csv.reader(handle), [])[:3] == ["id", "x", "y"]
    if earlier and image.exists():  # the image too must be the one written with that CSV
        earlier = _written_with(image, table)
    if not earlier:
        raise ValueError(
            f"{image}: it or {table.name} exists and is not an earlier map of crystaltwins; "
            "nothing was written; give a new file name (or remove those files yourself)"
        )


#: the 2-D map methods: their names, and the fewest crystals each draws (t-SNE needs more points
#: than its perplexity of at least 2; UMAP's spectral start more than 2)
MAP_METHODS = {"pca": ("PCA", 2), "tsne": ("t-SNE", 3), "umap": ("UMAP", 3)}


@dataclass
class Projection:
    """2-D coordinates ``(N, 2)`` of embeddings and the names of their two axes."""

    coordinates: np.ndarray
    axis_labels: tuple[str, str] = ("component 1", "component 2")


def project_2d(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> Projection:
    """``(N, D)`` embeddings → :class:`Projection` with t-SNE, UMAP or PCA; PCA's axes give the
    fraction of the variance each explains."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if method not in MAP_METHODS:
        raise ValueError(f"unknown method {method!r}; choose tsne, umap or pca")
    name, fewest = MAP_METHODS[method]
    if len(vectors) < fewest:
        raise ValueError(f"a 2-D {name} map needs at least {fewest} crystals, got {len(vectors)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        coordinates = pca.fit_transform(vectors)
        ratios = np.nan_to_num(pca.explained_variance_ratio_)
        labels = tuple(f"PC{k + 1} ({100 * r:.1f}% of variance)" for k, r in enumerate(ratios))
        return Projection(coordinates, labels)  # type: ignore[arg-type]
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(vectors) - 1) / 3)))
        coordinates = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(vectors)
        return Projection(coordinates, ("t-SNE 1", "t-SNE 2"))
    try:  # umap
        import umap
    except ImportError as error:
        raise ImportError(
            "UMAP needs the umap-learn package: pip install 'crystaltwins[umap]'"
        ) from error
    coordinates = umap.UMAP(n_components=2, random_state=seed).fit_transform(vectors)
    return Projection(coordinates, ("UMAP 1", "UMAP 2"))


def reduce_2d(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``(N, D)`` embeddings → ``(N, 2)`` with t-SNE, UMAP or PCA (see :func:`project_2d`)."""
    return project_2d(vectors, method, seed).coordinates


def colorable(color: np.ndarray | None, log_color: bool = False) -> np.ndarray | None:
    """Which crystals ``(N,)`` can be coloured: a finite value, positive on a log scale."""
    if color is None:
        return None
    color = np.asarray(color, dtype=np.float64)
    usable = np.isfinite(color)
    return usable & (color > 0) if log_color else usable


def embedding_map(
    coordinates: np.ndarray,
    color: np.ndarray | None,
    path: str | os.PathLike,
    color_label: str = "",
    title: str = "",
    ax: plt.Axes | None = None,
    axis_labels: tuple[str, str] = ("component 1", "component 2"),
    log_color: bool = False,
) -> Path | None:
    """Scatter of 2-D coordinates ``(N, 2)`` coloured by a property ``(N,)``, with a colour bar
    named ``color_label``; crystals without a usable value (NaN, or ≤ 0 on a log scale) are
    drawn in grey beneath, with their count in the legend."""
    from matplotlib.colors import LogNorm

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.8, 4.6))
    else:
        fig = ax.figure
    usable = colorable(color, log_color)
    if usable is not None and usable.any():
        missing = ~usable
        if missing.any():
            ax.scatter(
                coordinates[missing, 0],
                coordinates[missing, 1],
                s=5,
                c="lightgrey",
                edgecolors="none",
                label=f"no value ({int(missing.sum())})",
            )
            ax.legend(loc="best", frameon=False, fontsize=8)
        points = ax.scatter(
            coordinates[usable, 0],
            coordinates[usable, 1],
            c=np.asarray(color, dtype=np.float64)[usable],
            s=6,
            cmap="viridis",
            edgecolors="none",
            norm=LogNorm() if log_color else None,
        )
        fig.colorbar(points, ax=ax, label=color_label + (" (log scale)" if log_color else ""))
    else:
        ax.scatter(coordinates[:, 0], coordinates[:, 1], s=6, edgecolors="none")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
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


@dataclass
class MapSummary:
    """What :func:`draw_map` drew: the image, the table of coordinates, the colouring."""

    image: Path
    table: Path
    crystals: int
    color_name: str | None
    #: crystals drawn in grey: no value of ``color_name`` (NaN), or none a log scale can show
    uncoloured: int
    seconds: float
    #: coloured on a log scale (only values > 0 can be shown)
    log_color: bool = False

    def lines(self) -> list[str]:
        """What the CLI prints."""
        lines = [f"{self.image} and {self.table} ({self.crystals} crystals, {self.seconds:.1f} s)"]
        if self.uncoloured:
            usable = "no value > 0 (log colour scale)" if self.log_color else "no value"
            lines.append(
                f"{self.uncoloured} of {self.crystals} crystals have {usable} of "
                f"{self.color_name!r} and were left out of the colouring (drawn in grey)"
            )
        return lines


def draw_map(
    ids: np.ndarray,
    vectors: np.ndarray,
    labels: dict[str, np.ndarray],
    out: str | os.PathLike,
    method: str = "tsne",
    color: str | None = None,
    seed: int = 0,
    log_color: bool = False,
    units: dict[str, str] | None = None,
) -> MapSummary:
    """A 2-D map of embeddings ``(N, D)`` coloured by the label ``color`` (default: the first
    label), saved to ``out`` and its coordinates to ``out`` with ``.csv`` (``id,x,y,<color>``).

    :param units: known units of labels, for the colour bar.
    :raises ValueError: an unknown label, or an output that is not an earlier map.
    """
    check_map_output(out)
    color_name = color or (next(iter(labels)) if labels else None)
    if color_name is not None and color_name not in labels:
        raise ValueError(f"no label {color_name!r}; available: {sorted(labels)}")
    values = np.asarray(labels[color_name], dtype=np.float64) if color_name else None
    started = time.time()
    projection = project_2d(vectors, method, seed)
    image = Path(out)
    usable = colorable(values, log_color)
    unit = (units or {}).get(color_name or "", "")
    embedding_map(
        projection.coordinates,
        values,
        image,
        quantity_label(color_name or "", unit),
        f"{method.upper()} of {len(ids)} crystal embeddings",
        axis_labels=projection.axis_labels,
        log_color=log_color,
    )
    table = image.with_suffix(".csv")
    with atomic_path(table) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "x", "y", *([color_name] if color_name else [])])
        for k in range(len(ids)):
            extra = [] if values is None else ["" if np.isnan(values[k]) else values[k]]
            writer.writerow([ids[k], *projection.coordinates[k].tolist(), *extra])
    uncoloured = 0 if usable is None else int((~usable).sum())
    return MapSummary(
        image, table, len(ids), color_name, uncoloured, time.time() - started, log_color
    )
