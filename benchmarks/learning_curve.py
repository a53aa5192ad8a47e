"""Learning curves: test MAE of Crystal Twins (fine-tuned) and of the same CGCNN trained from
scratch against the number of training crystals (issue 15, section 2).

For every task, training-set size and seed, both methods train on the *same* crystals and are
scored on the *same* validation and test crystals: the split is made once per seed (60/20/20, as
in the paper's protocol) and only the training part is subsampled (``max_train``), so that every
point of a curve shares its validation and test sets. Runs resume: a finished run (its
``metrics.json``) is read back, an interrupted one continues from its last checkpoint;
``--only-finished`` trains nothing and redraws the table and figures from the finished runs;
``--previous`` reuses the points of an earlier ``results.json`` (the committed one). A size at
or above the training set of a known "all" point (finished, or in ``--all-from``) is skipped.

Epochs: ``--epochs`` at every size, raised to ``--min-steps`` optimiser steps for small training
sets (``ceil(min_steps / ceil(n / batch))`` epochs, at most ``--max-epochs``); the rule is chosen on
validation MAE (see docs/results/learning_curves/README.md).

Example (perovskites, CT from the shipped encoder, 3 seeds)::

    python benchmarks/learning_curve.py --tasks perovskites --sizes 100 300 1000 3000 \\
        --seeds 3 --data-root ../shared/data --out runs/curves

writes ``runs/curves/results.json``, ``runs/curves/summary.md`` and
``runs/curves/label_curve_<task>.png``.
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

METHODS = ("scratch", "ct")


def epochs_for(size: int, batch: int, epochs: int, min_steps: int, max_epochs: int) -> int:
    """Epochs for ``size`` training crystals: ``epochs``, or enough for ``min_steps`` optimiser
    steps when the training set is small, capped at ``max_epochs``."""
    steps_per_epoch = max(1, math.ceil(size / batch))
    return int(min(max_epochs, max(epochs, math.ceil(min_steps / steps_per_epoch))))


def finished_point(
    args: argparse.Namespace, task: Any, size: int | None, seed: int, method: str
) -> dict[str, Any] | None:
    """The ``metrics.json`` of a finished run of this point (here, or the "all" point in
    ``--all-from``), or ``None``; trains nothing."""
    label = "all" if size is None else str(size)
    done = args.out / task.name / f"n{label}" / f"seed{seed}" / method / "metrics.json"
    if done.exists():
        if (done.parent / "config.yaml").exists():  # made with this point's settings?
            from crystaltwins.evaluation.bench import check_reusable
            from crystaltwins.training.finetune import FinetuneConfig

            check_reusable(
                done.parent, FinetuneConfig(**finetune_settings(args, task, size, seed, method))
            )
        return json.loads(done.read_text())
    earlier_point = PREVIOUS.get(task.name, {}).get(label, {}).get(method, [])
    for metrics in earlier_point:
        if metrics["seed"] == seed:
            return metrics
    if size is None and args.all_from is not None:
        earlier = args.all_from / "runs" / task.name / f"seed{seed}" / method / "metrics.json"
        if earlier.exists():
            return json.loads(earlier.read_text())
    return None


#: the runs of ``--previous``: task → size label → method → list of ``metrics.json``
PREVIOUS: dict[str, Any] = {}
#: settings that change every run's result: ``--previous`` must match them
RESULT_SETTINGS = (
    "epochs", "min_steps", "max_epochs", "batch_size", "max_eval", "warmup_epochs",
    "lr_schedule",
)  # fmt: skip
#: settings that change only the pre-trained method's runs (a run from scratch ignores them):
#: where they differ, ``--previous`` gives its scratch points only
PRETRAINED_SETTINGS = (
    "pretrained", "encoder_lr_factor", "freeze_encoder_epochs", "encoder_anchor", "head_init",
)  # fmt: skip
#: what a setting was before this script recorded it
UNRECORDED = {"encoder_anchor": "0.0", "lr_schedule": "constant", "head_init": "new"}


def _differing(earlier: dict[str, str], settings: dict[str, str], names: tuple[str, ...]) -> str:
    from crystaltwins.models.pretrained import recorded_model_name

    def was(k: str) -> str | None:
        value = earlier.get(k, UNRECORDED.get(k))
        return recorded_model_name(value) if k == "pretrained" and value else value

    return ", ".join(f"{k} {was(k)} (now {settings[k]})" for k in names if was(k) != settings[k])


def previous_points(path: Path, settings: dict[str, str] | None = None) -> dict[str, Any]:
    """task → size label → method → list of ``metrics.json`` (each with its ``seed``) of an
    earlier ``results.json``. Files written before seeds were recorded list each point's runs in
    the order of their seeds, from 0: the script trains seeds in that order, and every point of
    the committed table holds seeds 0..n-1. With ``settings`` (this run's): refused unless
    :data:`RESULT_SETTINGS` match; only the scratch points are kept when
    :data:`PRETRAINED_SETTINGS` differ (another pre-trained model or fine-tuning of it)."""
    earlier = json.loads(path.read_text())
    methods_kept = METHODS
    if settings is not None:
        differ = _differing(earlier["settings"], settings, RESULT_SETTINGS)
        if differ:
            raise SystemExit(f"--previous {path} was made with other settings: {differ}")
        differ = _differing(earlier["settings"], settings, PRETRAINED_SETTINGS)
        if differ:
            print(f"--previous {path}: its scratch points only ({differ})", flush=True)
            methods_kept = ("scratch",)
    points: dict[str, Any] = {}
    for task, values in earlier["tasks"].items():
        for label, methods in values["sizes"].items():
            for method, runs in methods.items():
                if method not in methods_kept:
                    continue
                kept = [{"seed": k, **m} for k, m in enumerate(runs)]  # a stored seed wins
                points.setdefault(task, {}).setdefault(label, {})[method] = kept
    return points


def finetune_settings(
    args: argparse.Namespace, task: Any, size: int | None, seed: int, method: str
) -> dict[str, Any]:
    """The ``finetune`` arguments of one run (``size`` ``None``: all training crystals)."""
    label = "all" if size is None else str(size)
    train_size = size if size is not None else 10**9
    return dict(
        data=str(args.data_root / task.file),
        target=task.target,
        out=str(args.out / task.name / f"n{label}" / f"seed{seed}" / method),
        pretrained=None if method == "scratch" else args.pretrained,
        from_scratch=method == "scratch",
        target_transform=task.transform,
        unit=task.unit,
        epochs=epochs_for(
            train_size, args.batch_size, args.epochs, args.min_steps, args.max_epochs
        ),
        batch_size=args.batch_size,
        encoder_lr_factor=args.encoder_lr_factor,
        freeze_encoder_epochs=0 if method == "scratch" else args.freeze_encoder_epochs,
        encoder_anchor=0.0 if method == "scratch" else args.encoder_anchor,
        head_init="new" if method == "scratch" else args.head_init,
        warmup_epochs=args.warmup_epochs,
        lr_schedule=args.lr_schedule,
        seed=seed,
        max_train=size,
        max_eval=args.max_eval,
        resume=True,
        progress=False,
        plots=False,
        featurize_workers=1,
    )


def run_point(
    args: argparse.Namespace, task: Any, size: int | None, seed: int, method: str
) -> dict[str, Any] | None:
    """Train (or read back) one run; returns its ``metrics.json``. A method not asked for
    (``--methods``) is only read back when an earlier call finished it (else ``None``)."""
    from crystaltwins.api import finetune

    label = "all" if size is None else str(size)
    finished = finished_point(args, task, size, seed, method)
    if finished is not None or method not in args.methods or args.only_finished:
        return finished
    settings = finetune_settings(args, task, size, seed, method)
    print(f"{task.name} n={label} seed {seed} {method}: {settings['epochs']} epochs", flush=True)
    started = time.time()
    metrics = finetune(**settings)
    print(
        f"  test MAE {metrics['test']['mae']:.4f} {task.unit} "
        f"(val {metrics['val']['mae']:.4f}) in {time.time() - started:.0f} s",
        flush=True,
    )
    return metrics


def summarize(results: dict[str, Any]) -> str:
    """A markdown table per task: size, scratch and CT test MAE (mean ± std over seeds), gain."""
    name = results["settings"].get("pretrained_label", "CT")
    lines = []
    for task_name, points in results["tasks"].items():
        unit = points["unit"]
        lines += [
            f"### {task_name} (test MAE, {unit}; mean ± std over seeds, population std (ddof 0))",
            "",
            f"| training crystals | scratch | {name} | {name} vs scratch "
            f"| validation MAE scratch / {name} | test crystals |",
            "|---|---|---|---|---|---|",
        ]
        for label, point in points["sizes"].items():
            if not any(point[method] for method in METHODS):
                continue  # not run (e.g. --only-finished, or a size above the whole training set)
            row = [label]
            for method in METHODS:
                values = [m["test"]["mae"] for m in point[method]]
                mean = float(np.mean(values)) if values else math.nan
                spread = f" ± {float(np.std(values)):.4f} (n={len(values)})"
                row.append(
                    "–"
                    if not values
                    else f"{mean:.4f}" + (spread if len(values) > 1 else " (1 run)")
                )
            # the gain over the seeds both methods finished (a mean over other seeds would mix
            # the seeds' spread into it)
            common = set.intersection(
                *({m.get("seed", k) for k, m in enumerate(point[method])} for method in METHODS)
            )
            means = {
                method: np.mean(
                    [
                        m["test"]["mae"]
                        for k, m in enumerate(point[method])
                        if m.get("seed", k) in common
                    ]
                    or [math.nan]
                )
                for method in METHODS
            }
            gain = 100 * (means["scratch"] - means["ct"]) / means["scratch"]
            row.append(f"{gain:+.1f}% {'better' if gain > 0 else 'worse'}" if gain == gain else "–")
            val = [np.mean([m["val"]["mae"] for m in point[k]] or [math.nan]) for k in METHODS]
            row.append(" / ".join(f"{v:.4f}" if v == v else "–" for v in val))
            counts = sorted(
                {int(m["test"]["count"]) for k in METHODS for m in point[k] if "count" in m["test"]}
            )
            row.append(", ".join(f"{c:,}" for c in counts) or "–")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curve(
    task_name: str, points: dict[str, Any], path: Path, pretrained_name: str = "Crystal Twins"
) -> None:
    """Log-log test MAE vs training crystals, mean and standard deviation over seeds;
    ``pretrained_name`` names the pre-trained method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=150)
    for method, label, marker in (
        ("scratch", "CGCNN from scratch", "o"),
        ("ct", pretrained_name, "s"),
    ):
        xs, means, stds = [], [], []
        for point in points["sizes"].values():
            values = [m["test"]["mae"] for m in point[method]]
            if values:
                xs.append(np.mean([m["crystals"]["train"] for m in point[method]]))
                means.append(np.mean(values))
                stds.append(np.std(values))
        ax.errorbar(xs, means, yerr=stds, marker=marker, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training crystals")
    ax.set_ylabel(f"test MAE ({points['unit']})")
    ax.set_title(f"{task_name}: test MAE vs labelled data")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    from crystaltwins.evaluation.tasks import TASKS
    from crystaltwins.io.atomic import write_json_atomic, write_text_atomic
    from crystaltwins.training.configs import LR_SCHEDULES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["perovskites"], choices=sorted(TASKS))
    p.add_argument("--sizes", nargs="+", default=["100", "300", "1000", "3000", "all"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--pretrained",
        default="crystal-twins",
        help="the pre-trained method's model (default: the shipped Crystal Twins encoder)",
    )
    p.add_argument(
        "--pretrained-label",
        default="CT",
        help="the pre-trained method's name in the table and figure (e.g. 'MP e_form transfer')",
    )
    p.add_argument("--epochs", type=int, default=200, help="epochs at every size (default 200)")
    p.add_argument("--min-steps", type=int, default=0, help="at least this many steps (default 0)")
    p.add_argument("--max-epochs", type=int, default=2000, help="cap (default 2000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--encoder-lr-factor",
        type=float,
        default=0.2,
        help="CT's encoder learning-rate factor (default 0.2, the paper's protocol, which the "
        "committed curves use; finetune's own default is 1.0)",
    )
    p.add_argument("--max-eval", type=int, default=None, help="cap validation and test sizes")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--freeze-encoder-epochs", type=int, default=0, help="CT: encoder frozen first")
    p.add_argument("--warmup-epochs", type=int, default=0, help="linear learning-rate warm-up")
    p.add_argument(
        "--head-init",
        default="new",
        choices=("new", "source"),
        help="CT: the property head new, or from a fine-tuned start's (default new)",
    )
    p.add_argument(
        "--lr-schedule",
        default="constant",
        choices=LR_SCHEDULES,
        help="learning rates over the epochs, every run (default constant, the paper's)",
    )
    p.add_argument(
        "--encoder-anchor",
        type=float,
        default=0.0,
        help="CT: L2-SP weight pulling the encoder towards its pre-trained weights (default 0)",
    )
    p.add_argument(
        "--only-finished",
        action="store_true",
        help="train nothing: read back the finished runs and redraw the table and figures",
    )
    p.add_argument(
        "--all-from",
        type=Path,
        default=None,
        help="a `bench --preset paper` --out "
        "whose runs give the 'all' point (same seeds, same splits)",
    )
    p.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="the results.json of an earlier run of this script (same settings): its points are "
        "reused where OUT has no finished run (a committed table grows without its run folders); "
        "made with another pre-trained model or fine-tuning of it: its scratch points only",
    )
    args = p.parse_args(argv)
    from crystaltwins.models.pretrained import canonical_model_name

    args.pretrained = canonical_model_name(args.pretrained)  # recorded by the model's own name
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    if args.previous:
        if args.previous.resolve() == (args.out / "results.json").resolve():
            raise SystemExit("--previous must not be OUT/results.json (this run rewrites it)")
        PREVIOUS.update(previous_points(args.previous, settings))
    started = time.time()
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
        "settings": settings,
        "tasks": {},
    }
    for name in args.tasks:
        task = TASKS[name]
        points: dict[str, Any] = {"unit": task.unit, "sizes": {}}
        results["tasks"][name] = points
        whole = finished_point(args, task, None, 0, "scratch")  # the "all" point, if known
        for label in args.sizes:
            size = None if label == "all" else int(label)
            if size is not None and whole is not None and size >= whole["crystals"]["train"]:
                print(
                    f"{task.name}: {size} >= the {whole['crystals']['train']} training crystals "
                    "of the 'all' point: skipped",
                    flush=True,
                )
                continue
            point = points["sizes"][label] = {m: [] for m in METHODS}
            for seed in range(args.seeds):
                for method in METHODS:
                    metrics = run_point(args, task, size, seed, method)
                    if metrics is not None:
                        point[method].append({**metrics, "seed": seed})
                results["minutes"] = (time.time() - started) / 60
                write_json_atomic(args.out / "results.json", results)
                write_text_atomic(args.out / "summary.md", summarize(results))
        label = "Crystal Twins" if args.pretrained_label == "CT" else args.pretrained_label
        plot_curve(name, points, args.out / f"label_curve_{name}.png", label)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
