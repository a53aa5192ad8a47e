"""Which pre-training recipe transfers? A screen of objectives on validation MAE (issue 15 §4).

Every recipe pre-trains an encoder on the same unlabeled corpus subset (the same crystals,
epochs, learning rate and batch for all), then each task is fine-tuned from it and from scratch
on the same splits and seeds (``max_train`` training crystals, validation and test capped at
``max_eval``). Recipes are compared on **validation** MAE only; the test MAE is recorded so that
the chosen recipe can be reported, never used to choose.

The corpus must not hold the tasks' crystals (default: ``mp36k`` + ``perovskite_synth``; the
tasks default to ``perovskites`` and ``hoip``). Runs resume: a finished pre-training
(``model.pt``) or fine-tuning (``metrics.json``) is read back.

Example::

    python benchmarks/objective_screen.py --data-root ../shared/data --out runs/screen

writes ``runs/screen/results.json`` and ``runs/screen/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: name -> (objective, objective weights, augmentations); "scratch" and "shipped" are baselines.
RECIPES: dict[str, tuple[str, str | None, str]] = {
    "barlow_twins": ("barlow_twins", None, "rp,am,em"),
    "vicreg": ("vicreg", None, "rp,am,em"),
    "nt_xent": ("nt_xent", None, "rp,am,em"),
    "masked_element": ("masked_element", None, "am"),
    "denoise": ("denoise", None, "gn,em"),
    "bt+masked+denoise": ("barlow_twins+masked_element+denoise", None, "gn,am,em"),
    # Barlow Twins with this package's definitions before 2026-12-01 (no L2 normalisation,
    # every atom moved exactly 0.05 Å, edges masked per crystal), what the shipped encoder used
    "barlow_twins_v0": ("barlow_twins", None, "rp,am,em"),
}
#: settings of a recipe besides its objective and augmentations
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {
    "barlow_twins_v0": {
        "barlow_l2_normalize": False,
        "perturbation_min": 0.05,
        "edge_mask_per": "crystal",
    },
}
BASELINES = ("scratch", "shipped")


def pretrained_model(args: argparse.Namespace, name: str) -> str:
    """The model file of recipe ``name`` (pre-trained here unless finished earlier)."""
    from crystaltwins.api import pretrain

    out = args.out / "pretrain" / name
    if (out / "model.pt").exists():
        return str(out / "model.pt")
    objective, weights, augment = RECIPES[name]
    print(f"pre-training {name}: {objective} on {args.pretrain_crystals} crystals", flush=True)
    started = time.time()
    path = pretrain(
        [str(args.data_root / f) for f in args.corpus],
        str(out),
        objective=objective,
        objective_weights=weights,
        augment=augment,
        noise_sigma=args.noise_sigma,
        lr=args.pretrain_lr,
        epochs=args.pretrain_epochs,
        max_crystals=args.pretrain_crystals,
        **RECIPE_SETTINGS.get(name, {}),
        resume=(out / "checkpoints" / "last.ckpt").exists(),
        progress=False,
        featurize_workers=1,
    )
    print(f"  done in {time.time() - started:.0f} s", flush=True)
    return str(path)


def finetune_run(
    args: argparse.Namespace, task: Any, recipe: str, model: str | None, seed: int
) -> dict[str, Any]:
    """One fine-tuning (or from-scratch) run; returns its metrics."""
    from crystaltwins.api import finetune

    out = args.out / "finetune" / task.name / recipe / f"seed{seed}"
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    metrics = finetune(
        str(args.data_root / task.file),
        task.target,
        str(out),
        pretrained=model,
        from_scratch=model is None,
        target_transform=task.transform,
        unit=task.unit,
        epochs=args.finetune_epochs,
        encoder_lr_factor=args.encoder_lr_factor,
        seed=seed,
        max_train=args.max_train,
        max_eval=args.max_eval,
        resume=(out / "checkpoints" / "last.ckpt").exists(),
        progress=False,
        plots=False,
        featurize_workers=1,
    )
    print(
        f"  {task.name} {recipe} seed {seed}: val MAE {metrics['val']['mae']:.4f}, "
        f"test MAE {metrics['test']['mae']:.4f} {task.unit}",
        flush=True,
    )
    return metrics


def summarize(results: dict[str, Any]) -> str:
    """Per task: validation MAE (mean ± std over seeds) of every recipe, relative to scratch,
    and the test MAE beside it (not used for choosing)."""
    lines = []
    for task, rows in results["tasks"].items():
        scratch = np.mean([m["val"]["mae"] for m in rows.get("scratch", [])] or [np.nan])
        lines += [
            f"### {task} ({rows['unit']}): chosen on validation MAE",
            "",
            "| recipe | validation MAE | vs scratch (validation) | test MAE (not used to choose) |",
            "|---|---|---|---|",
        ]
        for recipe, runs in rows.items():
            if recipe == "unit" or not runs:
                continue
            val = [m["val"]["mae"] for m in runs]
            test = [m["test"]["mae"] for m in runs]
            gain = 100 * (scratch - np.mean(val)) / scratch
            lines.append(
                f"| {recipe} | {np.mean(val):.4f} ± {np.std(val):.4f} (n={len(val)}) | "
                f"{gain:+.1f}% | {np.mean(test):.4f} ± {np.std(test):.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from crystaltwins.evaluation.tasks import TASKS
    from crystaltwins.io.atomic import write_json_atomic, write_text_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipes", nargs="+", default=[*BASELINES, *RECIPES])
    p.add_argument("--tasks", nargs="+", default=["perovskites", "hoip"], choices=sorted(TASKS))
    p.add_argument("--corpus", nargs="+", default=["mp36k.csv.gz", "perovskite_synth.csv.gz"])
    p.add_argument("--pretrain-crystals", type=int, default=12_000)
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--pretrain-lr", type=float, default=1e-4)
    p.add_argument("--noise-sigma", type=float, default=0.1)
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument("--encoder-lr-factor", type=float, default=1.0)
    p.add_argument("--max-train", type=int, default=1_000)
    p.add_argument("--max-eval", type=int, default=1_000)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    unknown = set(args.recipes) - set(RECIPES) - set(BASELINES)
    if unknown:
        p.error(f"unknown recipes {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "recipes": {k: RECIPES.get(k, k) for k in args.recipes},
        "tasks": {},
    }
    for recipe in args.recipes:
        if recipe == "scratch":
            model = None
        elif recipe == "shipped":
            model = "crystal-twins"
        else:
            model = pretrained_model(args, recipe)
        for name in args.tasks:
            task = TASKS[name]
            rows = results["tasks"].setdefault(name, {"unit": task.unit})
            rows[recipe] = [finetune_run(args, task, recipe, model, s) for s in range(args.seeds)]
            results["minutes"] = (time.time() - started) / 60
            write_json_atomic(args.out / "results.json", results)
            write_text_atomic(args.out / "summary.md", summarize(results))
    print(summarize(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
