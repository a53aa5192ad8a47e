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

writes ``OUT/results.json``, ``OUT/summary.md`` and ``OUT/label_efficiency.png``; the committed
command, with every start, is in ``docs/results/label_efficiency/README.md``.
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

from crystaltwins.evaluation.metrics import labels_to_reach

SPLITS = ("val", "test")
GOAL_LABELS = 1000
GOAL_GAIN = 0.25
FEWER = "fewer than measured"
MORE = "more than measured"


def _size_order(label: str) -> float:
    return math.inf if label == "all" else float(label)


def curve_point(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One point of a curve from its seeds' ``metrics.json``: mean training crystals, the
    seeds, validation/test crystals scored, and each split's mean and per-seed MAE."""
    point: dict[str, Any] = {
        "train": float(np.mean([r["crystals"]["train"] for r in runs])),
        "seeds": len(runs),
    }
    for split in SPLITS:
        point[f"{split}_crystals"] = int(np.mean([r[split]["count"] for r in runs]))
        point[f"{split}_seeds"] = [float(r[split]["mae"]) for r in runs]
        point[split] = float(np.mean(point[f"{split}_seeds"]))
    return point


def _same_model(init: str | None, pretrained: str | None) -> bool:
    """Whether a run's ``init`` is the script's ``pretrained`` (``default`` in either: a run or
    script of before ``default`` moved, meaning the Crystal Twins encoder)."""
    from crystaltwins.models.pretrained import recorded_model_name

    return (
        init is not None
        and pretrained is not None
        and (recorded_model_name(init) == recorded_model_name(pretrained))
    )


def start_points(path: Path) -> tuple[str, dict[str, dict[str, list[dict[str, Any]]]]]:
    """The name and the pre-trained runs (task -> size label -> runs) of one ``results.json``,
    completed by the ``runs/TASK/nSIZE/seedK/metrics.json`` beside it that started from the
    same model (the file's own points take precedence)."""
    results = json.loads(path.read_text())
    settings = results["settings"]
    name = settings.get("pretrained_label", "CT")
    if name == "CT":
        name = f"Crystal Twins ({settings.get('pretrained', 'crystal-twins')} encoder, "
        name += f"x {settings.get('encoder_lr_factor', '?')})"
    points: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, data in results["tasks"].items():
        for label, point in data["sizes"].items():
            if point.get("ct"):
                points.setdefault(task, {})[label] = list(point["ct"])
    from_folders: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for metrics_path in sorted(path.parent.glob("runs/*/n*/seed*/metrics.json")):
        size_dir = metrics_path.parent.parent
        metrics = json.loads(metrics_path.read_text())
        if _same_model(metrics.get("init"), settings.get("pretrained")):
            from_folders.setdefault((size_dir.parent.name, size_dir.name[1:]), []).append(metrics)
    for (task, label), runs in from_folders.items():
        points.setdefault(task, {}).setdefault(label, runs)
    return name, points


def scratch_curves(path: Path) -> dict[str, dict[str, Any]]:
    """Per task: unit and the scratch curve's points (size label -> point), ascending in mean
    training crystals; a point no larger than the one before it (e.g. a size capped at the
    whole training set) is left out."""
    results = json.loads(path.read_text())
    curves = {}
    for task, data in results["tasks"].items():
        measured = sorted(
            (
                (label, curve_point(point["scratch"]))
                for label, point in data["sizes"].items()
                if point.get("scratch")
            ),
            key=lambda item: (item[1]["train"], _size_order(item[0])),
        )
        points: dict[str, dict[str, Any]] = {}
        for label, point in measured:
            if not points or point["train"] > list(points.values())[-1]["train"]:
                points[label] = point
        curves[task] = {"unit": data["unit"], "points": points}
    return curves


def equivalent(curve: dict[str, Any], split: str, error: float) -> float:
    """Scratch training crystals that give ``error`` on ``split`` (see ``labels_to_reach``)."""
    points = list(curve["points"].values())
    return labels_to_reach([p["train"] for p in points], [p[split] for p in points], error)


def _worth(labels: float, train: float) -> float | None:
    return labels / train if 0 < labels < math.inf else None


def analyse(scratch: dict[str, dict[str, Any]], starts: list[Path]) -> dict[str, Any]:
    """Every start's points with their scratch equivalents (mean and per seed), and what the
    goal would be worth. Files that share a name are one start; two of them giving the same
    task and size is an error."""
    analysis: dict[str, Any] = {"starts": {}, "goal": {}}
    for path in starts:
        name, points = start_points(path)
        start = analysis["starts"].setdefault(name, {"files": [], "tasks": {}})
        start["files"].append(str(path))
        for task, sizes in points.items():
            if task not in scratch:
                print(f"{path}: {task} has no scratch curve in --scratch: left out", flush=True)
                continue
            curve = scratch[task]
            rows = start["tasks"].setdefault(task, {})
            for label, runs in sizes.items():
                if label in rows:
                    raise SystemExit(
                        f"{path}: {name} at {task} {label} is also in {start['files'][0]}"
                    )
                point = curve_point(runs)
                row: dict[str, Any] = {"labels": point["train"], "seeds": point["seeds"]}
                for split in SPLITS:
                    labels = equivalent(curve, split, point[split])
                    row[split] = {
                        "mae": point[split],
                        "scratch_mae": curve["points"].get(label, {}).get(split),
                        "scratch_labels": labels,
                        "worth": _worth(labels, point["train"]),
                        "seed_worths": [
                            _worth(equivalent(curve, split, mae), point["train"])
                            for mae in point[f"{split}_seeds"]
                        ],
                    }
                rows[label] = row
            start["tasks"][task] = dict(sorted(rows.items(), key=lambda kv: _size_order(kv[0])))
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


def _format_labels(value: float, curve: dict[str, Any], per: float | None = None) -> str:
    """Scratch crystals for an MAE, or with ``per`` their multiple of ``per`` labels ("x1.35");
    a count outside the curve as a bound at its end ("> 1,915", "< x1.00")."""
    sizes = [p["train"] for p in curve["points"].values()]
    bound, shown = ("> ", max(sizes)) if value == math.inf else ("", value)
    if value == 0.0:
        bound, shown = "< ", min(sizes)
    return f"{bound}{shown:,.0f}" if per is None else f"{bound}x{shown / per:.2f}"


def _format_seeds(worths: list[float | None]) -> str:
    known = [w for w in worths if w is not None]
    if len(known) < len(worths) or len(known) < 2:
        return "-" if len(worths) < 2 else "outside the curve"
    return f"x{min(known):.2f}-{max(known):.2f}"


def summarize(scratch: dict[str, dict[str, Any]], analysis: dict[str, Any]) -> str:
    """Markdown: the scratch curves, every start's worth, what the goal would be worth."""
    lines = [
        "### The scratch curves (mean over seeds; each seed read on the mean curve: the noise)",
        "",
        "| task | labels | seeds | validation / test crystals | MAE validation / test "
        "| its seeds' worth (validation) |",
        "|---|---|---|---|---|---|",
    ]
    for task, curve in scratch.items():
        for label, point in curve["points"].items():
            seeds = [
                _worth(equivalent(curve, "val", mae), point["train"]) for mae in point["val_seeds"]
            ]
            lines.append(
                f"| {task} ({curve['unit']}) | {label} ({point['train']:,.0f}) | {point['seeds']} "
                f"| {point['val_crystals']:,} / {point['test_crystals']:,} "
                f"| {point['val']:.4f} / {point['test']:.4f} | {_format_seeds(seeds)} |"
            )
    lines.append("")
    for name, start in analysis["starts"].items():
        lines += [
            f"### {name} ({', '.join(f'`{file}`' for file in start['files'])})",
            "",
            "| task | labels | MAE validation / test | scratch MAE at the same labels "
            "| scratch labels for the same MAE: validation / test | worth: validation / test "
            "| seeds' worth (validation) |",
            "|---|---|---|---|---|---|---|",
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
                    f"| {_format_labels(val['scratch_labels'], curve, row['labels'])} / "
                    f"{_format_labels(test['scratch_labels'], curve, row['labels'])} "
                    f"| {_format_seeds(val['seed_worths'])} |"
                )
        lines.append("")
    lines += [
        f"### What the goal would be worth: {GOAL_GAIN:.0%} lower MAE at {GOAL_LABELS:,} labels",
        "",
        f"| task | scratch MAE at {GOAL_LABELS:,} (validation / test) | {GOAL_GAIN:.0%} lower "
        "| scratch labels for it (validation / test) |",
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


def plot(scratch: dict[str, dict[str, Any]], analysis: dict[str, Any], path: Path) -> None:
    """One panel per task: what each start is worth (scratch labels / its labels, validation)
    against its labels; a start's points outside the scratch curve are drawn as open triangles
    at its ends (below: worse than scratch at the smallest size; above: better than scratch with
    the most labels); a star marks what the goal would be worth."""
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
            measured = [r for r in start["tasks"].get(task, {}).values() if r["val"]["worth"]]
            if measured:
                ax.plot(
                    [r["labels"] for r in measured],
                    [r["val"]["worth"] for r in measured],
                    marker="o",
                    color=colors[name],
                )
            sizes = [p["train"] for p in scratch[task]["points"].values()]
            for r in start["tasks"].get(task, {}).values():
                if r["val"]["scratch_labels"] in (0.0, math.inf):
                    below = r["val"]["scratch_labels"] == 0.0
                    ax.plot(
                        [r["labels"]],
                        [(min(sizes) if below else max(sizes)) / r["labels"]],
                        marker="v" if below else "^",
                        mfc="none",
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
    handles += [
        Line2D([], [], color="grey", marker="^", mfc="none", ls=""),
        Line2D([], [], color="grey", marker="v", mfc="none", ls=""),
        Line2D([], [], color="black", marker="*", ms=10, ls=""),
    ]
    names = [
        *colors,
        "better than scratch with the most labels measured (at least this)",
        "worse than scratch with the fewest labels measured (at most this)",
        f"{GOAL_GAIN:.0%} lower MAE than scratch at {GOAL_LABELS:,} (the goal)",
    ]
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (3.4 * rows + 0.8) + 0.02, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _json_ready(value: Any) -> Any:
    """``value`` with the counts outside a curve written as words: ``inf`` as "more than
    measured", a ``scratch_labels`` of 0 as "fewer than measured"."""
    if isinstance(value, dict):
        return {
            k: FEWER if k == "scratch_labels" and v == 0.0 else _json_ready(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and value == math.inf:
        return MORE
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
    arguments = sys.argv[1:] if argv is None else argv
    results = {
        "command": " ".join(["python", "benchmarks/label_efficiency.py", *arguments]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
        "scratch": {"file": str(args.scratch), "curves": scratch},
        **analysis,
    }
    write_json_atomic(args.out / "results.json", _json_ready(results))
    text = summarize(scratch, analysis)
    write_text_atomic(args.out / "summary.md", text)
    plot(scratch, analysis, args.out / "label_efficiency.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
