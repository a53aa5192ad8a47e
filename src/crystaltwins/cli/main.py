"""``crystaltwins`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from crystaltwins import __version__


def _add_graph_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--radius", type=float, default=8.0, help="neighbour cutoff in Å (default 8)")
    p.add_argument("--max-neighbors", type=int, default=12, help="neighbours per atom (default 12)")


def _add_cif_column_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cif-column",
        help="CSV column holding the structures (default: the column named cif or structure)",
    )


def _add_training_options(p: argparse.ArgumentParser) -> None:
    _add_cif_column_option(p)
    p.add_argument(
        "--config", help="YAML file of settings (keys: these flags' names); flags given override it"
    )
    p.add_argument("--seed", type=int, help="random seed (splits, initialisation, augmentations)")
    p.add_argument(
        "--encoder",
        help="encoder of a new model: cgcnn (default) or another name in "
        "crystaltwins.models.ENCODERS",
    )
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--atom-init", help="CGCNN atom_init.json defining the element features")
    p.add_argument(
        "--cache-root",
        help="where graph caches live (default $CRYSTALTWINS_CACHE or ~/.cache/crystaltwins)",
    )
    p.add_argument("--featurize-workers", type=int, help="processes building graph caches")
    p.add_argument("--loader-workers", type=int, help="data-loader worker processes")
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--devices", help="number of devices (several GPUs: data-parallel)")
    p.add_argument(
        "--precision", help="e.g. 32-true, 16-mixed, bf16-mixed (default: 16-mixed on GPU)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue the run in RUN_DIR from checkpoints/last.ckpt (same settings only)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the earlier run in RUN_DIR (only crystaltwins' own files are removed)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystaltwins",
        description="Self-supervised learning on crystal structures (Crystal Twins).",
    )
    parser.add_argument("--version", action="version", version=f"crystaltwins {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("featurize", help="build the graph cache of a dataset")
    p.add_argument(
        "data", help="CSV(.gz) with a CIF column, CGCNN folder, structure file or folder"
    )
    p.add_argument("--out", required=True, help="cache directory")
    _add_graph_options(p)
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)"
    )
    p.add_argument(
        "--atom-init", help="atom_init.json (default: the one in a CGCNN folder, else built-in)"
    )
    p.add_argument(
        "--target", action="append", help="label column that must be present (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    _add_cif_column_option(p)

    p = sub.add_parser("graph", help="print one crystal's graph, one row per edge")
    p.add_argument("structure", help="a structure file (CIF, POSCAR, extxyz, ...)")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    _add_graph_options(p)

    p = sub.add_parser("pretrain", help="self-supervised pre-training (Barlow Twins / SimSiam)")
    p.add_argument("data", nargs="+", help="one or more data sources (labels are ignored)")
    p.add_argument("--out", help="run directory (required here or in --config)")
    p.add_argument(
        "--objective",
        help="barlow_twins (default), simsiam, or another name in crystaltwins.losses.OBJECTIVES",
    )
    p.add_argument(
        "--augment",
        help="comma-separated names in crystaltwins.transforms.AUGMENTATIONS: rp, am, em, ... "
        "(default rp,am,em)",
    )
    p.add_argument("--perturbation", type=float, help="RP displacement in Å (default 0.05)")
    p.add_argument("--barlow-lambda", type=float, help="off-diagonal weight λ (default 0.0051)")
    p.add_argument("--val-fraction", type=float, help="validation fraction (default 0.05)")
    p.add_argument("--max-crystals", type=int, help="use a random subset of this many crystals")
    p.add_argument("--init-from", help="start from a model file or published .pth")
    _add_training_options(p)

    p = sub.add_parser(
        "finetune", help="fine-tune on a labelled dataset (or train CGCNN from scratch)"
    )
    p.add_argument("data")
    p.add_argument("--target", help="label column (required here or in --config)")
    p.add_argument("--out", help="run directory (required here or in --config)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--pretrained",
        help="our model.pt (or its run folder), a published Crystal Twins .pth, or 'default'",
    )
    group.add_argument(
        "--from-scratch", action="store_true", default=None, help="supervised CGCNN baseline"
    )
    p.add_argument("--task", choices=["regression", "classification"])
    p.add_argument("--target-transform", choices=["none", "log10"])
    p.add_argument("--unit", help="unit of the target, recorded in metrics.json (e.g. eV/atom)")
    p.add_argument(
        "--encoder-lr-factor", type=float, help="lr factor of the pre-trained encoder (default 0.2)"
    )
    p.add_argument(
        "--split",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions (default 0.6 0.2 0.2)",
    )
    p.add_argument("--split-column", help="column holding train/val/test")
    p.add_argument(
        "--fold",
        type=int,
        help="fold 0-4 of the matbench v0.1 protocol (KFold(5, shuffle, random_state=18012019) "
        "over the crystals in file order; validation: a quarter of the training folds)",
    )
    p.add_argument("--split-files", nargs=3, metavar=("TRAIN", "VAL", "TEST"), help="files of ids")
    p.add_argument("--split-seed", type=int, help="seed of the random split (default: --seed)")
    p.add_argument("--max-train", type=int, help="cap on training crystals")
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="train K models (seeds SEED..SEED+K-1, one split) in RUN_DIR/members; predictions "
        "are their mean, with their std and each member's value (default 1)",
    )
    p.add_argument(
        "--members-together",
        action="store_true",
        default=None,
        help="with --ensemble: train the members in one loop with stacked weights (faster on a "
        "GPU; no early stopping, no mid-run resume)",
    )
    p.add_argument("--early-stopping", type=int, help="patience in epochs on validation MAE")
    p.add_argument(
        "--data-on-device",
        choices=("auto", "never"),
        help="GPU runs: keep the training data on the GPU when it takes at most half its free "
        "memory (auto, the default), or stream batches from the cache (never)",
    )
    _add_training_options(p)

    for name, text in (
        ("predict", "predict a property for new crystals"),
        ("embed", "export crystal embeddings"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "model",
            help="model.pt, or the run folder holding it (or a published .pth for embed)",
        )
        p.add_argument("data")
        p.add_argument(
            "--out",
            required=True,
            help="predictions.csv" if name == "predict" else "embeddings.npz",
        )
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
        p.add_argument("--cache-root")
        p.add_argument(
            "--atom-init", help="for a published .pth: its atom_init.json (default: beside it)"
        )
        _add_cif_column_option(p)

    p = sub.add_parser("plot", help="2-D map of embeddings coloured by a property (paper Fig. 3)")
    p.add_argument(
        "source", help="embeddings.npz, or a model file or run folder (then give --data)"
    )
    p.add_argument("--data", help="crystals to embed when SOURCE is a model")
    p.add_argument("--out", required=True, help="map.png (coordinates go to map.csv)")
    p.add_argument("--method", choices=["tsne", "umap", "pca"], default="tsne")
    p.add_argument("--color", help="label column to colour by (default: the first one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--atom-init", help="for a published .pth: its atom_init.json (default: beside it)"
    )
    _add_cif_column_option(p)

    from crystaltwins.evaluation.bench import add_bench_arguments

    p = sub.add_parser("bench", help="reproduce the paper's comparison (Table 2, ablation, t-SNE)")
    add_bench_arguments(p)
    return parser


def _config_from_args(config_cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """Dataclass config: file settings, then flags given on the command line, then ``fixed``."""
    from crystaltwins.training.common import load_config_file

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    names = {f.name for f in fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{args.config}: unknown settings {unknown}")
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    values.update({k: v for k, v in fixed.items() if v is not None})
    required = [
        f.name
        for f in fields(config_cls)
        if f.init and f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [name for name in required if values.get(name) is None]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ValueError(f"give {flags} (on the command line or in --config)")
    _check_accelerator(values.get("accelerator"))
    return config_cls(**values)


def _check_accelerator(name: str | None) -> None:
    """A clear error for a GPU request on a machine without one (before any work)."""
    if not name:
        return
    name = str(name).lower()
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"no CUDA GPU available (torch {torch.__version__}); use cpu or leave it to auto"
            )
    elif name == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ValueError("no Apple MPS device available; use cpu")


def _model_argument(args: argparse.Namespace, model: str | Path, ensemble: bool = False) -> Any:
    """The model path, or the loaded model when ``--atom-init`` is given for a published .pth.

    :param ensemble: an ensemble's file may be given (``predict``)."""
    if getattr(args, "atom_init", None):
        from crystaltwins.models.checkpoint import load_model, load_predictor

        return (load_predictor if ensemble else load_model)(model, atom_init=args.atom_init)
    return model


def _cmd_featurize(args: argparse.Namespace) -> int:
    from crystaltwins.data.cache import build_graph_cache
    from crystaltwins.graph.atom_features import AtomFeaturizer, default_featurizer
    from crystaltwins.graph.settings import GraphSettings

    source = Path(args.data)
    featurizer = (
        AtomFeaturizer.from_json(args.atom_init)
        if args.atom_init
        else default_featurizer(source if source.is_dir() else None)
    )
    summary = build_graph_cache(
        source,
        args.out,
        GraphSettings(radius=args.radius, max_neighbors=args.max_neighbors),
        featurizer=featurizer,
        targets=args.target,
        workers=args.workers,
        progress=args.progress,
        force=args.force,
        cif_column=args.cif_column,
    )
    print(f"element features: {featurizer.name}")
    print("\n".join(summary.lines()))
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from crystaltwins.graph.crystal_graph import build_crystal_graph
    from crystaltwins.graph.settings import GraphSettings
    from crystaltwins.io.readers import iter_entries, parse_entry

    entries = list(iter_entries(args.structure))
    if not entries:
        raise ValueError(f"{args.structure}: no structure found")
    record = parse_entry(entries[0])
    graph = build_crystal_graph(
        record.structure,
        GraphSettings(radius=args.radius, max_neighbors=args.max_neighbors),
        id=record.id,
        source=record.source,
    )
    columns = ["atom", "neighbor", "distance_A", "image_a", "image_b", "image_c"]
    rows = graph.edge_table()
    if args.format == "json":
        species = [str(s.specie) for s in record.structure]
        print(
            json.dumps(
                {
                    "id": record.id,
                    "species": species,
                    "edges": [dict(zip(columns, r, strict=True)) for r in rows],
                },
                indent=1,
            )
        )
    else:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows((i, j, f"{d:.6f}", a, b, c) for i, j, d, a, b, c in rows)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from crystaltwins.training.common import main_print
    from crystaltwins.training.pretrain import PretrainConfig, pretrain

    config = _config_from_args(PretrainConfig, args, data=list(args.data), out=args.out)
    path = pretrain(config)
    main_print(f"pre-trained model: {path}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from crystaltwins.training.common import main_print
    from crystaltwins.training.finetune import FinetuneConfig, finetune

    pretrained = args.pretrained
    fixed: dict[str, Any] = {
        "data": args.data,
        "target": args.target,
        "out": args.out,
        "pretrained": pretrained,
    }
    if args.split:
        fixed["split"] = tuple(args.split)
    if args.split_files:
        fixed["split_files"] = tuple(args.split_files)
    config = _config_from_args(FinetuneConfig, args, **fixed)
    if bool(config.pretrained) == bool(config.from_scratch):
        raise ValueError(
            "give exactly one of --pretrained MODEL and --from-scratch "
            "(on the command line or in --config)"
        )
    if abs(sum(config.split) - 1.0) > 1e-6:  # the library normalises; on the CLI, a typo
        raise ValueError(f"--split fractions must add up to 1, got {sum(config.split):g}")
    for name in config.split_files or ():
        if not Path(name).is_file():
            raise ValueError(f"--split-files: no such file {name!r}")
    metrics = finetune(config)
    if metrics:
        test = metrics["test"]
        key = "mae" if "mae" in test else "accuracy"
        ensemble = metrics.get("ensemble")
        of = f", mean of {ensemble['members']} models" if ensemble else ""
        main_print(
            f"test {key} {test[key]:.4f} on {test['count']} crystals ({metrics['target']}{of}); "
            f"run: {config.out}"
        )
        if ensemble:
            main_print(
                f"spread: {ensemble['within_1_std']:.0%} of test errors within 1 std, "
                f"{ensemble['within_2_std']:.0%} within 2; Spearman(|error|, std) "
                f"{ensemble['spearman_abs_error_std']:.2f}"
            )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from crystaltwins.evaluation.inference import check_output_file, predict, write_predictions_csv

    _check_accelerator(args.device)
    check_output_file(args.out, "predictions")  # before the work, not after
    result = predict(
        _model_argument(args, args.model, ensemble=True),
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        cache_root=args.cache_root,
        cif_column=args.cif_column,
    )
    write_predictions_csv(result, args.out)
    _report(result, args.out)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from crystaltwins.evaluation.inference import check_output_file, embed, write_embeddings_npz

    _check_accelerator(args.device)
    check_output_file(args.out, "embeddings")
    result = embed(
        _model_argument(args, args.model),
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        cache_root=args.cache_root,
        cif_column=args.cif_column,
    )
    write_embeddings_npz(result, args.out)
    _report(result, args.out)
    return 0


def _report(result: Any, out: str) -> None:
    print(f"{len(result.ids)} crystals -> {out}")
    if result.skipped:
        print(f"{len(result.skipped)} crystals could not be used:")
        for bad in result.skipped[:20]:
            print(f"  {bad}")


def _cmd_plot(args: argparse.Namespace) -> int:
    import numpy as np

    from crystaltwins.evaluation.plots import check_map_output, embedding_map, reduce_2d

    check_map_output(args.out)  # before any work
    source = Path(args.source)
    if source.suffix == ".npz":
        with np.load(source) as data:
            ids, vectors = data["ids"], data["embeddings"]
            labels = {k[len("label_") :]: data[k] for k in data.files if k.startswith("label_")}
    else:
        if not args.data:
            raise ValueError("give --data DATA when SOURCE is a model")
        from crystaltwins.evaluation.inference import embed

        result = embed(_model_argument(args, source), args.data, cif_column=args.cif_column)
        ids, vectors, labels = result.ids, result.values, result.labels
    color_name = args.color or (next(iter(labels)) if labels else None)
    if color_name is not None and color_name not in labels:
        raise ValueError(f"no label {color_name!r}; available: {sorted(labels)}")
    color = labels[color_name] if color_name else None
    started = time.time()
    coordinates = reduce_2d(vectors, args.method, args.seed)
    out = Path(args.out)
    embedding_map(
        coordinates,
        color,
        out,
        color_name or "",
        f"{args.method.upper()} of {len(ids)} crystal embeddings",
    )
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "x", "y", *([color_name] if color_name else [])])
        for k in range(len(ids)):
            writer.writerow(
                [
                    ids[k],
                    coordinates[k, 0],
                    coordinates[k, 1],
                    *([color[k]] if color is not None else []),
                ]
            )
    print(f"{out} and {out.with_suffix('.csv')} ({time.time() - started:.1f} s)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from crystaltwins.evaluation.bench import run_bench_from_args

    return run_bench_from_args(args)


COMMANDS = {
    "featurize": _cmd_featurize,
    "graph": _cmd_graph,
    "pretrain": _cmd_pretrain,
    "finetune": _cmd_finetune,
    "predict": _cmd_predict,
    "embed": _cmd_embed,
    "plot": _cmd_plot,
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crystaltwins.io.records import CrystalInputError

    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # e.g. `crystaltwins graph x.cif | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (CrystalInputError, FileNotFoundError, KeyError, ValueError, ImportError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"crystaltwins {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"crystaltwins {args.command}: interrupted; {_RESUME_HINTS[args.command]}",
            file=sys.stderr,
        )
        return 130
    except OSError as error:
        print(f"crystaltwins {args.command}: error: {_os_error_message(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        disk_full = _disk_full_message(error)
        if disk_full:
            print(f"crystaltwins {args.command}: error: {disk_full}", file=sys.stderr)
            return 2
        if type(error).__name__ != "MisconfigurationException":  # Lightning's settings errors
            raise
        print(f"crystaltwins {args.command}: error: {error}", file=sys.stderr)
        return 2


_RUN_HINT = "run the same command again with --resume to continue after the last finished epoch"
_REBUILD_HINT = (
    "run the same command again to continue (finished parts of the graph cache are kept)"
)
#: What to do after a Ctrl-C, by command.
_RESUME_HINTS = {
    "featurize": _REBUILD_HINT,
    "graph": "nothing was written",
    "pretrain": _RUN_HINT,
    "finetune": _RUN_HINT,
    "predict": _REBUILD_HINT,
    "embed": _REBUILD_HINT,
    "plot": "nothing was written; run it again",
    "bench": "run the same command again to continue (finished runs are reused)",
}


def _os_error_message(error: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do."""
    import errno

    where = (
        " ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
        or "a file"
    )
    if error.errno == errno.ENOSPC or error.errno == errno.EDQUOT:
        return (
            f"no space left on the disk (writing {where}); free some space and run the command "
            "again (finished work is kept)"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write {where} (permission denied or read-only); choose a writable folder "
            "(--out, --cache-root or $CRYSTALTWINS_CACHE)"
        )
    if error.errno == errno.ENAMETOOLONG:
        return f"file name too long: {where}; use a shorter name or folder"
    if error.errno == errno.EISDIR:
        return f"{where} is a folder; give a file name"
    return f"{error.strerror or error} ({where})"


def _disk_full_message(error: BaseException) -> str | None:
    """The message for a write that failed because the disk is full, as reported by PyTorch's
    writer (``RuntimeError: ... unexpected pos ...`` from ``torch.save``), else ``None``."""
    import errno

    from crystaltwins.training.common import is_disk_full

    if not is_disk_full(error):
        return None
    return _os_error_message(OSError(errno.ENOSPC, "No space left on device"))


if __name__ == "__main__":
    sys.exit(main())
