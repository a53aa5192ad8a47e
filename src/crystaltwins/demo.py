"""The main job: the whole Crystal Twins pipeline on a real dataset, in a few minutes on a CPU.

    python -m crystaltwins.demo [--data DIR] [--out runs/demo]

1. builds the graph cache of the perovskites dataset (18,928 crystals);
2. pre-trains a CGCNN encoder with Barlow Twins on a random subset (labels ignored);
3. fine-tunes it on formation energy, and trains the same CGCNN from scratch on the same split;
4. prints a results line for each and draws the t-SNE map of the test crystals' embeddings.

The data folder comes from ``--data``, else ``$CRYSTALTWINS_DATA``, else ``../shared/data``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def find_data(explicit: str | None) -> Path | None:
    for candidate in (explicit, os.environ.get("CRYSTALTWINS_DATA"), "../shared/data"):
        if candidate and (Path(candidate) / "perovskites.csv.gz").exists():
            return Path(candidate)
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crystaltwins.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        help="folder holding perovskites.csv.gz (default $CRYSTALTWINS_DATA or ../shared/data)",
    )
    parser.add_argument("--out", default="runs/demo", help="(default: runs/demo)")
    parser.add_argument("--pretrain-crystals", type=int, default=4000, help="(default: 4000)")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="(default: 3)")
    parser.add_argument("--finetune-epochs", type=int, default=40, help="(default: 40)")
    parser.add_argument("--max-train", type=int, default=2000, help="(default: 2000)")
    return parser


def _graph_cache(source: Path, workers: int) -> None:
    """Step 1: the graph cache the runs use (default graph settings and element features)."""
    from crystaltwins import api
    from crystaltwins.data.sources import cache_dir_for
    from crystaltwins.graph.atom_features import featurizer_for
    from crystaltwins.graph.settings import GraphSettings

    print(f"== 1. graph cache of {source}")
    featurizer = featurizer_for(source)
    summary = api.featurize(
        source, cache_dir_for(source, GraphSettings(), featurizer), workers, featurizer=featurizer
    )
    print("\n".join(summary.lines()))


def _finetune_both(
    source: Path, model: Path, out: Path, args: argparse.Namespace
) -> dict[str, dict]:
    """Step 3: fine-tune the pre-trained encoder, and train CGCNN from scratch, on one split."""
    from crystaltwins import api

    results = {}
    for method in ("scratch", "ct"):
        what = "from the pre-trained encoder" if method == "ct" else "CGCNN from scratch"
        print(f"\n== 3. fine-tuning ({what})")
        results[method] = api.finetune(
            source,
            "e_form",
            out / f"finetune_{method}",
            pretrained=str(model) if method == "ct" else None,
            from_scratch=method == "scratch",
            epochs=args.finetune_epochs,
            max_train=args.max_train,
            max_eval=2000,
            resume=True,
        )
    return results


def _tsne_map(source: Path, out: Path) -> None:
    """Step 4: t-SNE of the fine-tuned CT embeddings of the test crystals."""
    import numpy as np

    from crystaltwins import api
    from crystaltwins.evaluation.plots import embedding_map, reduce_2d

    print("\n== 4. t-SNE map of the fine-tuned CT embeddings")
    embeddings = api.embed(out / "finetune_ct" / "model.pt", source)
    test_ids = [
        line.split(",")[0]
        for line in (out / "finetune_ct" / "test_predictions.csv").read_text().splitlines()[1:]
    ]
    position = {str(i): k for k, i in enumerate(embeddings.ids.tolist())}
    rows = np.array([position[i] for i in test_ids])
    embedding_map(
        reduce_2d(embeddings.values[rows], "tsne"),
        embeddings.labels["e_form"][rows],
        out / "tsne_ct.png",
        "formation energy (eV/cell)",
        "CT embeddings of perovskites test crystals",
    )


def _print_results(results: dict[str, dict], out: Path, started: float) -> None:
    print("\n== results: perovskites formation energy (eV/cell), test MAE")
    for method, label in (("scratch", "CGCNN from scratch"), ("ct", "Crystal Twins fine-tuned")):
        m = results[method]
        print(
            f"{label:26s} MAE {m['test']['mae']:.4f}  R2 {m['test']['r2']:.3f}  ({m['crystals']['train']} train / {m['crystals']['test']} test crystals, {m['epochs_run']} epochs)"
        )
    print(f"mean predictor             MAE {results['ct']['mean_predictor_test_mae']:.4f}")
    print(
        f"t-SNE map: {out / 'tsne_ct.png'}; runs in {out}; total {(time.time() - started) / 60:.1f} min"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data = find_data(args.data)
    if data is None:
        print(
            "demo: no data found. Pass --data DIR (or set CRYSTALTWINS_DATA) to a folder holding "
            "perovskites.csv.gz (columns id, cif, e_form). See the README, 'Getting the data', "
            "for how to fetch the public matbench_perovskites dataset.",
            file=sys.stderr,
        )
        return 2
    from crystaltwins import api
    from crystaltwins.io.atomic import write_json_atomic

    out, source = Path(args.out), data / "perovskites.csv.gz"
    workers = os.cpu_count() or 1
    started = time.time()
    _graph_cache(source, workers)
    print(
        f"\n== 2. Barlow Twins pre-training on {args.pretrain_crystals} crystals, {args.pretrain_epochs} epochs"
    )
    model = api.pretrain(
        source,
        out / "pretrain",
        epochs=args.pretrain_epochs,
        lr=1e-4,
        max_crystals=args.pretrain_crystals,
        featurize_workers=workers,
        resume=True,
    )
    results = _finetune_both(source, model, out, args)
    _tsne_map(source, out)
    _print_results(results, out, started)
    write_json_atomic(out / "summary.json", results)
    return 0


def _main_with_messages() -> int:
    """:func:`main`, with a user's error (e.g. ``--out`` holding a run with other settings) as
    one line, and Ctrl-C as how to continue."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_main_with_messages())
