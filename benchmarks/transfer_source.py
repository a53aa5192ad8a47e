"""Train the supervised transfer sources shipped as ``--pretrained mp-eform`` / ``mp-multi``, or ship a run (``mp-multi-33k``).

CGCNN from scratch on the Materials Project formation energies of ``mp36k.csv.gz``, with every
test crystal of the benchmark's MP tasks held out: the test parts of ``bench``'s random
60/20/20 splits of ``mp_formation_energy``, ``mp_band_gap`` and ``mp_fermi_energy`` for seeds
0-2 (the ids ``bench`` would test on, computed by its own split planning). Those crystals are
the source's test set, so its reported test MAE is on crystals it never trained on, and
``bench --pretrained mp-eform`` on the MP tasks (seeds 0-2) tests on crystals whose labels the
source never saw. Of the rest, a seeded 5% is the validation set (the best epoch), the others
are trained on.

    python benchmarks/transfer_source.py --data-root ../shared/data --out runs/mp_eform

writes ``OUT/splits/{train,val,test}.txt`` and the run in ``OUT/run`` (resumable; ``--target
band_gap`` or ``efermi`` trains a source on another label of the same crystals, ``--aux-targets``
on several at once, the splits those of ``--target``); with
``--ship FILE`` also the model as shipped (``src/crystaltwins/resources/crystaltwins_mp_eform.pt``):
the same weights, its data source recorded by file name only, and what was held out
(``docs/model_card.md``). ``--ship-run RUN --ship FILE`` ships an existing run instead (a
``crystaltwins finetune`` run on the whole source file; nothing is trained), recording that only
its own test split was held out and the command that made it (from its ``config.yaml``): the
shipped ``mp-multi-33k``. The run's model file records (hashed) the ids of its training and
validation crystals (:mod:`crystaltwins.models.provenance`), so that a run starting from it counts
which of its own validation and test crystals those are. ``--record-labelled FILE`` adds that
record to a model file shipped before files carried it (the splits are recomputed, not trained;
the file's recorded numbers of training and validation crystals must match them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_FILE = "mp36k.csv.gz"
SOURCE_TARGET = "formation_energy_per_atom"
#: Other label columns of the source file a source model can be trained on, and their units.
SOURCE_UNITS = {SOURCE_TARGET: "eV/atom", "band_gap": "eV", "efermi": "eV"}
HELD_OUT_TASKS = ("mp_formation_energy", "mp_band_gap", "mp_fermi_energy")


def main(argv: list[str] | None = None) -> int:
    from crystaltwins.api import finetune
    from crystaltwins.data.sources import prepare_caches
    from crystaltwins.evaluation.bench import BenchConfig, benchmark_test_ids
    from crystaltwins.io.atomic import write_json_atomic, write_text_atomic
    from crystaltwins.training.configs import FinetuneConfig, field_default
    from crystaltwins.training.finetune import starting_point

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, help="the folder of mp36k.csv.gz (to train)")
    p.add_argument("--out", type=Path, help="the source's folder (to train)")
    p.add_argument("--epochs", type=int, default=50, help="the best validation epoch is kept")
    p.add_argument("--seeds-held-out", type=int, default=3, help="bench seeds 0..N-1")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--target",
        default=SOURCE_TARGET,
        choices=sorted(SOURCE_UNITS),
        help="the label the source model learns (the shipped mp-eform: formation_energy_per_atom)",
    )
    p.add_argument(
        "--aux-targets",
        nargs="+",
        default=[],
        choices=sorted(SOURCE_UNITS),
        help="more labels of the same crystals learned alongside --target (multi-task source: "
        "extra head outputs, the crystals and splits of --target)",
    )
    p.add_argument(
        "--aux-weight",
        type=float,
        default=field_default(FinetuneConfig, "aux_weight"),
        help="weight of the auxiliary targets' loss (finetune's --aux-weight)",
    )
    p.add_argument("--ship", type=Path, default=None, help="write the shipped model file here")
    p.add_argument(
        "--ship-run",
        type=Path,
        default=None,
        help="ship this finetune run (its folder) on the whole source file, nothing of the "
        "benchmark held out, to --ship instead of training (only --ship goes with it)",
    )
    p.add_argument(
        "--record-labelled",
        type=Path,
        default=None,
        help="only add the hashed ids of the splits' training and validation crystals to this "
        "(shipped) model file, trained with these settings; nothing is trained",
    )
    args = p.parse_args(argv)
    if args.target in args.aux_targets:
        p.error(f"--aux-targets must not repeat --target {args.target}")
    if args.ship_run is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if v != p.get_default(k)]
        if args.ship is None or set(given) != {"--ship-run", "--ship"}:
            p.error(f"--ship-run goes with --ship FILE only (given: {' '.join(given)})")
        try:
            ship(args.ship_run / "model.pt", args.ship, held_out_own_test_split(args.ship_run))
        except ValueError as error:
            p.error(str(error))
        return 0
    if args.data_root is None or args.out is None:
        p.error("--data-root and --out are needed (except with --ship-run)")

    source = args.data_root / SOURCE_FILE
    bench = BenchConfig(
        out=str(args.out / "bench_plan"),
        data_root=str(args.data_root),
        tasks=list(HELD_OUT_TASKS),
        seeds=args.seeds_held_out,
        featurize_workers=1,
    )
    held_out = {i for f, i in benchmark_test_ids(bench) if Path(f).name == SOURCE_FILE}
    splits = args.out / "splits"
    config = FinetuneConfig(
        data=str(source),
        target=args.target,
        aux_targets=list(args.aux_targets),
        aux_weight=args.aux_weight,
        out=str(args.out / "run"),
        from_scratch=True,
        unit=SOURCE_UNITS[args.target],
        epochs=args.epochs,
        seed=args.seed,
        split_files=tuple(str(splits / f"{n}.txt") for n in ("train", "val", "test")),
        resume=True,
        progress=False,
        plots=False,
        featurize_workers=1,
    )
    start = starting_point(config)
    (cache,) = prepare_caches(
        [source], start.settings, start.featurizer, config.cache_root, progress=False, log=None
    )
    ids = np.asarray(cache.ids).astype(str)
    values = cache.labels([args.target])[:, 0]
    usable = np.isfinite(values)
    rest = np.array([i for i in ids[usable] if i not in held_out])
    rng = np.random.default_rng(args.seed)
    rng.shuffle(rest)
    n_val = round(args.val_fraction * len(rest))
    # the held-out crystals this property is known for (an MP crystal may lack, e.g., a Fermi
    # energy: the split may only name crystals with a usable label)
    parts = {
        "train": rest[n_val:],
        "val": rest[:n_val],
        "test": sorted(held_out & set(ids[usable].tolist())),
    }
    if args.record_labelled is not None:
        position = {i: k for k, i in enumerate(ids)}
        trained = values[[position[i] for i in parts["train"]]]
        labelled = {n: list(parts[n]) for n in ("train", "val")}
        record_labelled(args.record_labelled, labelled, trained)
        return 0
    for name, part in parts.items():
        write_text_atomic(splits / f"{name}.txt", "\n".join(part) + "\n")
    print(
        f"{source}: {len(ids)} crystals; held out (test): {len(held_out)}, "
        f"validation {n_val}, training {len(rest) - n_val}",
        flush=True,
    )
    metrics = finetune(config=config)
    unit = SOURCE_UNITS[args.target]
    print(
        f"test MAE {metrics['test']['mae']:.4f} {unit} on {metrics['test']['count']} held-out "
        f"crystals (val {metrics['val']['mae']:.4f}); model: {args.out / 'run' / 'model.pt'}"
    )
    if args.aux_targets:
        outputs = output_maes(args.out / "run" / "model.pt", cache, parts["test"])
        write_json_atomic(args.out / "source_outputs.json", outputs)
        for column, score in outputs.items():
            print(
                f"  output {column}: MAE {score['mae']:.4f} on {score['count']} held-out crystals"
            )
    if args.ship is not None:
        recipe = "python benchmarks/transfer_source.py --data-root DATA --out OUT"
        if args.target != SOURCE_TARGET:
            recipe += f" --target {args.target}"
        if args.aux_targets:
            recipe += " --aux-targets " + " ".join(args.aux_targets)
        if args.aux_weight != p.get_default("aux_weight"):
            recipe += f" --aux-weight {args.aux_weight}"
        if args.epochs != p.get_default("epochs"):
            recipe += f" --epochs {args.epochs}"
        what = (
            f"test crystals of crystaltwins bench's {', '.join(HELD_OUT_TASKS)} "
            f"(random 60/20/20 splits, seeds 0-{args.seeds_held_out - 1}): the test set"
        )
        record = {"crystals": len(held_out), "what": what, "recipe": recipe}
        ship(args.out / "run" / "model.pt", args.ship, record)
    return 0


def output_maes(model: Path, cache: Any, test_ids: list[str]) -> dict[str, dict[str, float]]:
    """MAE of each output of a multi-task source (the target, then each auxiliary target, as
    ``predict`` gives them) on the crystals ``test_ids`` of its graph ``cache`` (the run's),
    beside that of predicting the training mean."""
    from crystaltwins.evaluation.inference import predict
    from crystaltwins.models.checkpoint import load_model

    bundle = load_model(model)
    info = bundle.info
    result = predict(bundle, cache.cache_dir)
    keep = np.isin(np.asarray(result.ids).astype(str), list(test_ids))
    predicted = {str(info["target_column"]): np.asarray(result.values), **result.auxiliary}
    means = {str(info["target_column"]): info["target_mean"]}
    means.update({a["column"]: a["mean"] for a in info["aux_targets"]})
    scores = {}
    for column, values in predicted.items():
        truth = np.asarray(result.labels[column], dtype=np.float64)
        known = keep & np.isfinite(truth)
        scores[column] = {
            "mae": float(np.abs(values[known] - truth[known]).mean()),
            "count": int(known.sum()),
            "mean_predictor_mae": float(np.abs(truth[known] - means[column]).mean()),
        }
    return scores


def held_out_own_test_split(run: Path) -> dict[str, Any]:
    """The ``held_out`` record of a finetune ``run`` on the whole source file, which held out
    only its own test split (none of the benchmark's test crystals), with the command that made
    it (from its ``config.yaml``).

    :raises ValueError: a run of another data file, or whose model records no labelled ids."""
    import torch
    import yaml

    from crystaltwins.cli.options import settings_as_flags
    from crystaltwins.models.provenance import LABELLED_KEY
    from crystaltwins.training.configs import FinetuneConfig

    if not (run / "model.pt").is_file() or not (run / "config.yaml").is_file():
        raise ValueError(f"{run}: not a finetune run folder (model.pt, config.yaml)")
    info = torch.load(run / "model.pt", weights_only=True)["info"]
    if Path(str(info.get("data_source"))).name != SOURCE_FILE or LABELLED_KEY not in info:
        raise ValueError(f"{run}: not a run on {SOURCE_FILE} whose model records its labelled ids")
    settings = yaml.safe_load((run / "config.yaml").read_text())
    flags = settings_as_flags(FinetuneConfig, settings, skip=("out",))
    recipe = " ".join(["crystaltwins finetune", SOURCE_FILE, *flags])
    return {
        "crystals": int(info["crystals"]["test"]),
        "what": "training run's own random test split only, NOT the test crystals of "
        f"crystaltwins bench's {', '.join(HELD_OUT_TASKS)}: not a start for benchmarking those "
        "tasks",
        "recipe": recipe,
    }


def ship(model: Path, target: Path, held_out: dict[str, Any]) -> None:
    """Copy ``model`` to ``target`` with its data source as a file name (no local path) and
    ``held_out``: the crystals held out (``crystals``, ``what``) and the command that made it
    (``recipe``)."""
    import torch

    from crystaltwins.io.atomic import atomic_path
    from crystaltwins.models.checkpoint import load_model

    payload = torch.load(model, weights_only=True)
    info = payload["info"]
    info["data_source"] = Path(info["data_source"]).name
    info["held_out"] = held_out
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    load_model(target)  # still a valid model file
    print(f"shipped: {target} ({target.stat().st_size:,} bytes)")


def record_labelled(model: Path, parts: dict[str, list[str]], trained: np.ndarray) -> None:
    """Add the hashes of ``parts``' ids (training and validation) to ``model``'s info, after
    checking that the file says it was trained on that many crystals, whose labels
    (``trained``, the training part's) had the mean and standard deviation it recorded."""
    import torch

    from crystaltwins.io.atomic import atomic_path
    from crystaltwins.models.checkpoint import load_model
    from crystaltwins.models.provenance import LABELLED_KEY, labelled_record

    payload = torch.load(model, weights_only=True)
    info = payload["info"]
    recorded = {n: info["crystals"][n] for n in parts}
    if recorded != {n: len(ids) for n, ids in parts.items()}:
        raise SystemExit(
            f"{model}: trained on {recorded} crystals, these splits have "
            f"{ {n: len(ids) for n, ids in parts.items()} }: not its splits"
        )
    moments = float(trained.mean()), float(trained.std())
    if not np.allclose(moments, (info["target_mean"], info["target_std"]), rtol=1e-6, atol=0):
        raise SystemExit(
            f"{model}: its training labels had mean and std {info['target_mean']:.9g}, "
            f"{info['target_std']:.9g}; these splits' {moments[0]:.9g}, {moments[1]:.9g}: "
            "not its splits"
        )
    info[LABELLED_KEY] = labelled_record([i for ids in parts.values() for i in ids])
    with atomic_path(model) as tmp:
        torch.save(payload, tmp)
    load_model(model)  # still a valid model file
    print(f"{model}: {len(info[LABELLED_KEY]):,} labelled crystals recorded")


if __name__ == "__main__":
    sys.exit(main())
