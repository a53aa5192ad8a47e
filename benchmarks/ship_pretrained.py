"""Copy a finished pre-training run into the package as the default encoder, with its loss curve.

Run after ``crystaltwins pretrain ../shared/data/*.csv.gz --out RUN`` (see docs/model_card.md)::

    python benchmarks/ship_pretrained.py RUN [--figure docs/model_card_loss.png]

The model file keeps everything needed to rebuild the encoder (weights, dimensions, element
table, graph settings) and what it was trained on; machine-specific absolute paths of the data
sources are reduced to file names.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

from crystaltwins.evaluation.plots import learning_curves
from crystaltwins.models.checkpoint import load_model, save_model

PACKAGE_FILE = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "crystaltwins"
    / "resources"
    / "crystaltwins_pretrained.pt"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="pre-training run directory (with model.pt)")
    parser.add_argument("--figure", type=Path, default=Path("docs/model_card_loss.png"))
    parser.add_argument("--out", type=Path, default=PACKAGE_FILE)
    args = parser.parse_args()

    bundle = load_model(args.run / "model.pt")
    rows = list(csv.DictReader((args.run / "history.csv").open()))
    info = dict(bundle.info)
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    for key in ("lr", "weight_decay", "batch_size", "seed"):  # runs of older versions lack them
        info.setdefault(key, config[key])
    info["data_sources"] = [Path(s).name for s in info.get("data_sources", [])]
    info["history"] = [
        {
            "epoch": int(r["epoch"]),
            "train_loss": float(r["train_loss"]),
            "val_loss": float(r["val_loss"]),
        }
        for r in rows
        if r.get("train_loss") and r.get("val_loss")
    ]
    bundle.info = info
    save_model(args.out, bundle)
    learning_curves(args.run / "history.csv", args.figure)
    size = args.out.stat().st_size
    print(f"{args.out}: {size / 1024:.0f} KiB; loss curve {args.figure}")
    print({k: v for k, v in info.items() if k != "history"})


if __name__ == "__main__":
    main()
