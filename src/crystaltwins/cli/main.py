"""``crystaltwins`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crystaltwins import __version__


def _add_graph_options(p: argparse.ArgumentParser) -> None:
    """``--radius`` / ``--max-neighbors`` of commands that build graphs themselves."""
    from crystaltwins.graph.settings import GraphSettings
    from crystaltwins.training.configs import field_default

    radius = field_default(GraphSettings, "radius")
    neighbors = field_default(GraphSettings, "max_neighbors")
    p.add_argument("--radius", type=float, help=f"neighbour cutoff in Å (default: {radius:g})")
    p.add_argument(
        "--max-neighbors", type=int, help=f"neighbours kept per atom (default: {neighbors})"
    )


def _add_cif_column_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cif-column",
        help="CSV column holding the structures (default: the column named cif or structure)",
    )


def _add_id_key_option(p: argparse.ArgumentParser) -> None:
    """``--id-key``, with the help text of the run setting of the same name."""
    import dataclasses

    from crystaltwins.cli.options import field_help
    from crystaltwins.training.configs import RunOptions

    (field,) = (f for f in dataclasses.fields(RunOptions) if f.name == "id_key")
    p.add_argument("--id-key", metavar="KEY", help=field_help(field))


_DATA_HELP = "CSV(.gz) with a CIF column, CGCNN folder, structure file or folder, or graph cache"


def _add_config_file_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="YAML file of settings (keys: these options' names); options given override it",
    )


def build_parser() -> argparse.ArgumentParser:
    from crystaltwins.cli.options import add_config_options
    from crystaltwins.evaluation.bench import BenchConfig
    from crystaltwins.training.configs import (
        INFERENCE_BATCH,
        INFERENCE_DEVICE,
        FinetuneConfig,
        PretrainConfig,
    )

    parser = argparse.ArgumentParser(
        prog="crystaltwins",
        description="Self-supervised learning on crystal structures (Crystal Twins).",
    )
    parser.add_argument("--version", action="version", version=f"crystaltwins {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("featurize", help="build the graph cache of a dataset")
    p.add_argument("data", help=_DATA_HELP)
    p.add_argument("--out", required=True, help="cache folder")
    _add_graph_options(p)
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument(
        "--atom-init", help="atom_init.json (default: the one in a CGCNN folder, else built-in)"
    )
    p.add_argument(
        "--target", action="append", help="label column that must be present (repeatable)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _add_cif_column_option(p)
    _add_id_key_option(p)

    p = sub.add_parser("graph", help="print one crystal's graph, one row per edge")
    p.add_argument("structure", help="a structure file (CIF, POSCAR, extxyz, ...)")
    p.add_argument("--id", help="the crystal to show, in a file of several (default: the first)")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="(default: csv)")
    _add_graph_options(p)
    _add_id_key_option(p)

    p = sub.add_parser(
        "pretrain", help="self-supervised pre-training (Barlow Twins and other objectives)"
    )
    p.add_argument(
        "data",
        nargs="*",
        help="one or more data sources (labels are ignored; or data: in --config)",
    )
    _add_config_file_option(p)
    add_config_options(p, PretrainConfig)

    p = sub.add_parser("finetune", help="fine-tune on a labelled dataset (or train from scratch)")
    p.add_argument("data", nargs="?", help="labelled data (or data: in --config): " + _DATA_HELP)
    _add_config_file_option(p)
    add_config_options(p, FinetuneConfig)

    for name, text in (
        ("predict", "predict a property for new crystals"),
        ("embed", "export crystal embeddings"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "model",
            help="model.pt, the run folder holding it, or a shipped model: 'default' "
            "(mp-multi-33k), 'crystal-twins', 'mp-eform', 'mp-multi', 'mp-multi-33k' (a published "
            ".pth too for embed)",
        )
        p.add_argument("data", help="crystals: " + _DATA_HELP)
        p.add_argument(
            "--out",
            required=True,
            help="predictions.csv" if name == "predict" else "embeddings.npz",
        )
        p.add_argument(
            "--batch-size",
            type=int,
            default=INFERENCE_BATCH,
            help=f"(default: {INFERENCE_BATCH})",
        )
        p.add_argument(
            "--device",
            default=INFERENCE_DEVICE,
            help=f"cpu, cuda, cuda:1, mps or auto (default: {INFERENCE_DEVICE})",
        )
        p.add_argument(
            "--cache-root",
            help="where graph caches live (default: $CRYSTALTWINS_CACHE or ~/.cache/crystaltwins)",
        )
        p.add_argument(
            "--atom-init", help="for a published .pth: its atom_init.json (default: beside it)"
        )
        _add_cif_column_option(p)
        _add_id_key_option(p)

    p = sub.add_parser("plot", help="2-D map of embeddings coloured by a property (paper Fig. 3)")
    p.add_argument(
        "source", help="embeddings.npz, or a model file or run folder (then give --data)"
    )
    p.add_argument("--data", help="crystals to embed when SOURCE is a model")
    p.add_argument("--out", required=True, help="map.png (coordinates go to map.csv)")
    p.add_argument(
        "--method", choices=["tsne", "umap", "pca"], default="tsne", help="(default: tsne)"
    )
    p.add_argument("--color", help="label column to colour by (default: the first one)")
    p.add_argument("--log-color", action="store_true", help="logarithmic colour scale")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument(
        "--atom-init", help="for a published .pth: its atom_init.json (default: beside it)"
    )
    _add_cif_column_option(p)
    _add_id_key_option(p)

    p = sub.add_parser("bench", help="reproduce the paper's comparison (Table 2, ablation, t-SNE)")
    add_config_options(p, BenchConfig, required_here=False)
    from crystaltwins.cli import cache, info

    info.add_info_parser(sub), cache.add_cache_parser(sub)
    return parser


def _config_from_args(config_cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """A config from the ``--config`` file's settings, then the options given, then ``fixed``
    (it is checked by the library before any work)."""
    from crystaltwins.cli.options import given_settings
    from crystaltwins.training.common import load_config_file
    from crystaltwins.training.configs import SettingsFileError, config_from_settings

    file_settings = load_config_file(args.config) if getattr(args, "config", None) else None
    try:
        return config_from_settings(
            config_cls, file_settings, **{**given_settings(args, config_cls), **fixed}
        )
    except ValueError as error:
        unknown = str(error).startswith("unknown settings")
        if file_settings is not None and (unknown or isinstance(error, SettingsFileError)):
            raise ValueError(f"{args.config}: {error}") from None
        raise


def _model_argument(args: argparse.Namespace, model: str | Path, ensemble: bool = False) -> Any:
    """The model path, or the loaded model when ``--atom-init`` is given for a published .pth.

    :param ensemble: an ensemble's file may be given (``predict``)."""
    if getattr(args, "atom_init", None):
        from crystaltwins.models.checkpoint import load_model, load_predictor

        return (load_predictor if ensemble else load_model)(model, atom_init=args.atom_init)
    return model


def _cmd_featurize(args: argparse.Namespace) -> int:
    from crystaltwins import api
    from crystaltwins.graph.atom_features import featurizer_for

    summary = api.featurize(
        args.data,
        args.out,
        args.workers,
        radius=args.radius,
        max_neighbors=args.max_neighbors,
        atom_init=args.atom_init,
        targets=args.target,
        progress=args.progress,
        force=args.force,
        cif_column=args.cif_column,
        id_key=args.id_key,
    )
    print(f"element features: {featurizer_for(args.data, args.atom_init).name}")
    print("\n".join(summary.lines()))
    if summary.crystals == 0:  # a cache of nothing: say so and fail, as predict / embed do
        skipped = len(summary.skipped)
        why = (
            f"none of its crystals could be used ({skipped} skipped, listed in "
            f"{summary.cache_dir / 'skipped.csv'})"
            if skipped
            else "it holds no crystal"
        )
        print(f"crystaltwins featurize: error: {args.data}: {why}", file=sys.stderr)
        return 2
    return 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from crystaltwins import api

    graph, count = api.crystal_graph(
        args.structure,
        args.id,
        radius=args.radius,
        max_neighbors=args.max_neighbors,
        id_key=args.id_key,
    )
    if count > 1 and args.id is None:
        print(
            f"{args.structure}: holds {count} crystals; this is the first ({graph.id}); "
            "--id ID shows another",
            file=sys.stderr,
        )
    from pymatgen.core import Element

    columns = ["atom", "neighbor", "distance_A", "image_a", "image_b", "image_c"]
    rows = graph.edge_table()
    species = [Element.from_Z(int(z)).symbol for z in graph.atomic_numbers]
    if args.format == "json":
        print(
            json.dumps(
                {
                    "id": graph.id,
                    "species": species,
                    "edges": [dict(zip(columns, r, strict=True)) for r in rows],
                },
                indent=1,
            )
        )
    else:
        writer = csv.writer(sys.stdout)
        writer.writerow([*columns, "atom_species", "neighbor_species"])
        writer.writerows(
            (i, j, f"{d:.6f}", a, b, c, species[i], species[j]) for i, j, d, a, b, c in rows
        )
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from crystaltwins import api
    from crystaltwins.training.common import main_print
    from crystaltwins.training.configs import PretrainConfig

    config = _config_from_args(PretrainConfig, args, data=list(args.data) or None)
    path = api.pretrain(config=config)
    main_print(f"pre-trained model: {path}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from crystaltwins import api
    from crystaltwins.training.common import main_print
    from crystaltwins.training.configs import FinetuneConfig

    config = _config_from_args(FinetuneConfig, args, data=args.data)
    metrics = api.finetune(config=config)
    if metrics:
        test = metrics["test"]
        key = "mae" if "mae" in test else "accuracy"
        ensemble = metrics.get("ensemble")
        of = f", mean of {ensemble['members']} models" if ensemble else ""
        shown = metrics.get("metric_unit", metrics.get("unit"))  # log10(GPa) for a log10 run
        unit = f" {shown}" if key == "mae" and shown else ""
        main_print(
            f"test {key} {test[key]:.4f}{unit} on {test['count']} crystals "
            f"({metrics['target']}{of}); run: {config.out}"
        )
        if ensemble:
            main_print(
                f"spread: {ensemble['within_1_std']:.0%} of test errors within 1 std, "
                f"{ensemble['within_2_std']:.0%} within 2; Spearman(|error|, std) "
                f"{ensemble['spearman_abs_error_std']:.2f}"
            )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from crystaltwins import api

    result = api.predict(
        _model_argument(args, args.model, ensemble=True),
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        cache_root=args.cache_root,
        cif_column=args.cif_column,
        id_key=args.id_key,
        out=args.out,
    )
    _report(result, args.out)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from crystaltwins import api

    result = api.embed(
        _model_argument(args, args.model),
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        cache_root=args.cache_root,
        cif_column=args.cif_column,
        id_key=args.id_key,
        out=args.out,
    )
    _report(result, args.out)
    return 0


def _report(result: Any, out: str) -> None:
    print(f"{len(result.ids)} crystals -> {out}")
    if getattr(result, "truth", None) is not None:
        note = ""
        from crystaltwins.io.readers import is_generic_label

        if is_generic_label(result.target):  # e.g. every CGCNN folder's label
            note = " (a generic label name: check that it is the property the model predicts)"
        print(f"true_value: the input's {result.target!r} column{note}")
    if result.skipped:
        listed = f" (all listed in {result.skipped_file})" if result.skipped_file else ""
        count = len(result.skipped)
        print(f"{count} crystal{'s' if count != 1 else ''} could not be used{listed}:")
        for bad in result.skipped[:20]:
            print(f"  {bad}")


def _cmd_plot(args: argparse.Namespace) -> int:
    from crystaltwins import api

    source = (
        args.source if Path(args.source).suffix == ".npz" else _model_argument(args, args.source)
    )
    summary = api.plot_embeddings(
        source,
        args.out,
        args.data,
        method=args.method,
        color=args.color,
        seed=args.seed,
        cif_column=args.cif_column,
        id_key=args.id_key,
        log_color=args.log_color,
    )
    print("\n".join(summary.lines()))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from crystaltwins import api
    from crystaltwins.evaluation.bench import BenchConfig

    config = _config_from_args(BenchConfig, args, command="crystaltwins " + " ".join(sys.argv[1:]))
    api.bench(config=config)
    return 0


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


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A warning as the command line shows it: one line, without Python's source location."""
    return f"crystaltwins: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crystaltwins.io.records import CrystalInputError

    warnings.formatwarning = _warning_line

    try:
        return (getattr(args, "handler", None) or COMMANDS[args.command])(args)
    except BrokenPipeError:  # e.g. `crystaltwins graph x.cif | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (CrystalInputError, FileNotFoundError, KeyError, ValueError, ImportError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"crystaltwins {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crystaltwins {args.command}: interrupted; {_resume_hint(args)}", file=sys.stderr)
        return 130
    except SystemExit as error:
        if type(error).__name__ != "SIGTERMException":  # Lightning's, after a `kill` / preemption
            raise
        print(
            f"crystaltwins {args.command}: stopped by SIGTERM; {_resume_hint(args)}",
            file=sys.stderr,
        )
        return 143
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


def _resume_hint(args: argparse.Namespace) -> str:
    """What to do after a Ctrl-C or SIGTERM: members trained together keep no checkpoints, so
    their run starts again (members that had finished are kept)."""
    if args.command == "finetune" and getattr(args, "members_together", False):
        return (
            "run the same command again with --resume: members that finished are kept, the "
            "others, trained together without checkpoints, start again from their first epoch"
        )
    return _RESUME_HINTS.get(args.command, "run it again")


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
