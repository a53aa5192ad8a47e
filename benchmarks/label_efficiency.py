"""Labels saved: how many crystals training from scratch needs to match a pre-trained start
(issue 15: "fewer labels for the same error", read off the learning curves).

For each task, the scratch learning curve (mean MAE over seeds against the mean number of
training crystals, from ``--scratch``, a ``learning_curve.py`` ``results.json``) is interpolated
as a power law between its measured points (``crystaltwins.evaluation.metrics.labels_to_reach``;
nothing is extrapolated). For every point of every pre-trained start (the ``ct`` runs of each
``--start`` ``results.json``, plus the ``runs/TASK/nSIZE/seedK/metrics.json`` committed beside it
for points the file lacks), the table gives the number of scratch crystals with the same MAE and
the ratio to the crystals the start was fine-tuned on: "x2.0" means the start is worth twice its
labels. Validation MAE (the selection metric) and test MAE are read separately. The last table
says what the issue's goal (25% lower MAE at 1,000 labels) would be worth on the same curves.

Example (the committed curves and transfer starts)::

    python benchmarks/label_efficiency.py --scratch docs/results/learning_curves/results.json \\
        --start docs/results/learning_curves/results.json \\
        --start docs/results/transfer/mp_joint/results.json \\
        --start docs/results/transfer/mp_joint33k/results.json --out docs/results/label_efficiency

writes ``OUT/results.json``, ``OUT/summary.md`` and ``OUT/label_efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("val", "test")
GOAL_LABELS = 1000
GOAL_GAIN = 0.25


def _size_order(label: str) -> float:
    return math.inf if label == "all" else float(label)


def curve_points(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Mean training crystals and mean validation/test MAE over the seeds of one point."""
    if not runs:
        return None
    point = {"train": float(np.mean([r["crystals"]["train"] for r in runs])), "seeds": len(runs)}
    for split in SPLITS:
        point[split] = float(np.mean([r[split]["mae"] for r in runs]))
    return point


def start_points(path: Path) -> tuple[str, dict[str, dict[str, list[dict[str, Any]]]]]:
    """The name and the pre-trained runs (task -> size label -> runs) of one ``results.json``,
    completed by the ``runs/TASK/nSIZE/seedK/metrics.json`` beside it."""
    results = json.loads(path.read_text())
    name = results["settings"].get("pretrained_label", "CT")
    if name == "CT":
        factor = results["settings"].get("encoder_lr_factor", "?")
        name = f"Crystal Twins (shipped encoder, x {factor})"
    points: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, data in results["tasks"].items():
        for label, point in data["sizes"].items():
            if point.get("ct"):
                points.setdefault(task, {})[label] = list(point["ct"])
    from_folders: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for metrics_path in sorted(path.parent.glob("runs/*/n*/seed*/metrics.json")):
        size_dir = metrics_path.parent.parent
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("init") != "scratch":
            from_folders.setdefault((size_dir.parent.name, size_dir.name[1:]), []).append(metrics)
    for (task, label), runs in from_folders.items():
        points.setdefault(task, {}).setdefault(label, runs)  # the file's own point comes first
    return name, points


def scratch_curves(path: Path) -> dict[str, dict[str, Any]]:
    """Per task: unit and the scratch curve's points, ascending in training crystals."""
    results = json.loads(path.read_text())
    curves = {}
    for task, data in results["tasks"].items():
        points = [
            (label, p)
            for label, point in sorted(data["sizes"].items(), key=lambda kv: _size_order(kv[0]))
            if (p := curve_points(point.get("scratch", []))) is not None
        ]
        curves[task] = {"unit": data["unit"], "points": dict(points)}
    return curves


def equivalent(curve: dict[str, Any], split: str, error: float) -> float:
    """Scratch training crystals that give ``error`` on ``split`` (see ``labels_to_reach``)."""
    from crystaltwins.evaluation.metrics import labels_to_reach

    points = list(curve["points"].values())
    return labels_to_reach([p["train"] for p in points], [p[split] for p in points], error)


def _format_labels(value: float, curve: dict[str, Any]) -> str:
    sizes = [p["train"] for p in curve["points"].values()]
    if value == math.inf:
        return f"> {max(sizes):,.0f}"
    if value == 0.0:
        return f"< {min(sizes):,.0f}"
    return f"{value:,.0f}"


def analyse(scratch: dict[str, dict[str, Any]], starts: list[Path]) -> dict[str, Any]:
    """Every start's points with their scratch equivalents, and what the goal would be worth."""
    analysis: dict[str, Any] = {"starts": {}, "goal": {}}
    for path in starts:
        name, points = start_points(path)
        start = analysis["starts"].setdefault(name, {"files": [], "tasks": {}})
        start["files"].append(str(path))
        rows = start["tasks"]
        for task, sizes in points.items():
            if task not in scratch:
                continue
            curve = scratch[task]
            for label in sorted(sizes, key=_size_order):
                point = curve_points(sizes[label])
                assert point is not None
                row: dict[str, Any] = {"labels": point["train"], "seeds": point["seeds"]}
                for split in SPLITS:
                    labels = equivalent(curve, split, point[split])
                    row[split] = {
                        "mae": point[split],
                        "scratch_mae": curve["points"].get(label, {}).get(split),
                        "scratch_labels": labels,
                        "ratio": labels / point["train"] if 0 < labels < math.inf else None,
                    }
                rows.setdefault(task, {})[label] = row
    for task, curve in scratch.items():
        at_goal = curve["points"].get(str(GOAL_LABELS))
        if at_goal is None:
            continue
        analysis["goal"][task] = {
            split: {
                "scratch_mae": at_goal[split],
                "goal_mae": (1 - GOAL_GAIN) * at_goal[split],
                "scratch_labels": equivalent(curve, split, (1 - GOAL_GAIN) * at_goal[split]),
            }
            for split in SPLITS
        }
    return analysis


def summarize(scratch: dict[str, dict[str, Any]], analysis: dict[str, Any]) -> str:
    lines = []
    for name, start in analysis["starts"].items():
        lines += [
            f"### {name} ({', '.join(f'`{file}`' for file in start['files'])})",
            "",
            "| task | labels | MAE validation / test | scratch MAE at the same labels "
            "| scratch labels for the same MAE: validation / test | worth (validation / test) |",
            "|---|---|---|---|---|---|",
        ]
        for task, rows in start["tasks"].items():
            curve = scratch[task]
            for label, row in rows.items():
                val, test = row["val"], row["test"]
                at = " / ".join(
                    f"{v['scratch_mae']:.4f}" if v["scratch_mae"] is not None else "-"
                    for v in (val, test)
                )
                lines.append(
                    f"| {task} ({curve['unit']}) | {label} ({row['labels']:,.0f}; n={row['seeds']}) "
                    f"| {val['mae']:.4f} / {test['mae']:.4f} | {at} "
                    f"| {_format_labels(val['scratch_labels'], curve)} / "
                    f"{_format_labels(test['scratch_labels'], curve)} "
                    f"| {_ratio(val, row['labels'], curve)} / {_ratio(test, row['labels'], curve)} |"
                )
        lines.append("")
    lines += [
        f"### What the goal would be worth: {GOAL_GAIN:.0%} lower MAE at {GOAL_LABELS:,} labels",
        "",
        "| task | scratch MAE at 1,000 (validation / test) | 25% lower | scratch labels for it "
        "(validation / test) |",
        "|---|---|---|---|",
    ]
    for task, goal in analysis["goal"].items():
        curve = scratch[task]
        lines.append(
            f"| {task} ({curve['unit']}) | {goal['val']['scratch_mae']:.4f} / "
            f"{goal['test']['scratch_mae']:.4f} | {goal['val']['goal_mae']:.4f} / "
            f"{goal['test']['goal_mae']:.4f} | "
            f"{_format_labels(goal['val']['scratch_labels'], curve)} / "
            f"{_format_labels(goal['test']['scratch_labels'], curve)} |"
        )
    lines.append("")
    return "\n".join(lines)


def _ratio(split: dict[str, Any], labels: float, curve: dict[str, Any]) -> str:
    value = split["scratch_labels"]
    if value == math.inf:
        return f"> x{max(p['train'] for p in curve['points'].values()) / labels:.1f}"
    if value == 0.0:
        return f"< x{min(p['train'] for p in curve['points'].values()) / labels:.2f}"
    return f"x{value / labels:.2f}"


def plot(analysis: dict[str, Any], path: Path) -> None:
    """One panel per task: what each start is worth (scratch labels / its labels, validation)
    against its labels; points beyond the scratch curve are left out; a star marks what the
    goal would be worth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    tasks = sorted({t for s in analysis["starts"].values() for t in s["tasks"]})
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(analysis["starts"])}
    columns = min(3, len(tasks)) or 1
    rows = math.ceil(len(tasks) / columns) or 1
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.4 * rows + 0.8), dpi=150, squeeze=False
    )
    for ax, task in zip(axes.flat, tasks, strict=False):
        for name, start in analysis["starts"].items():
            measured = [r for r in start["tasks"].get(task, {}).values() if r["val"]["ratio"]]
            if measured:
                ax.plot(
                    [r["labels"] for r in measured],
                    [r["val"]["ratio"] for r in measured],
                    marker="o",
                    color=colors[name],
                )
        ax.axhline(1.0, color="grey", lw=1, ls="--")
        goal = analysis["goal"].get(task, {}).get("val", {}).get("scratch_labels", math.nan)
        if 0 < goal < math.inf:
            ax.plot([GOAL_LABELS], [goal / GOAL_LABELS], marker="*", ms=12, color="black", ls="")
        elif goal == math.inf:
            ax.text(
                0.97,
                0.95,
                f"{GOAL_GAIN:.0%} goal at {GOAL_LABELS:,}: beyond the measured\nscratch curve",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
            )
        ax.set_xscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"x{y:.3g}"))
        ax.set_title(task)
        ax.set_xlabel("fine-tuning labels")
        ax.set_ylabel("worth in scratch labels (validation)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles = [Line2D([], [], color=c, marker="o") for c in colors.values()]
    handles.append(Line2D([], [], color="black", marker="*", ms=10, ls=""))
    names = [*colors, f"{GOAL_GAIN:.0%} lower MAE than scratch at {GOAL_LABELS:,} (the goal)"]
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (3.4 * rows + 0.8) + 0.02, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _finite(value: Any) -> Any:
    """``value`` with every infinite count written as the string "more than measured"."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and value == math.inf:
        return "more than measured"
    return value


def main(argv: list[str] | None = None) -> int:
    from crystaltwins.io.atomic import write_json_atomic, write_text_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scratch", type=Path, required=True, help="results.json with the scratch curves"
    )
    p.add_argument(
        "--start",
        type=Path,
        action="append",
        required=True,
        help="results.json of a pre-trained start (repeat)",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    scratch = scratch_curves(args.scratch)
    analysis = analyse(scratch, args.start)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
        "scratch": {"file": str(args.scratch), "curves": scratch},
        **analysis,
    }
    write_json_atomic(args.out / "results.json", _finite(results))
    text = summarize(scratch, analysis)
    write_text_atomic(args.out / "summary.md", text)
    plot(analysis, args.out / "label_efficiency.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
