"""A steady-state fine-tuning epoch (training + validation): ours vs the original CGCNN loop.

* ``reference``: CGCNN's own training loop (``main.py`` of the original code: ``collate_pool`` of
  per-crystal padded ``(n, 12)`` neighbour indices and ``(n, 12, 41)`` Gaussian features made by
  CGCNN's ``GaussianDistance`` (float64 ``exp``, then float32: far Gaussians become denormal), the
  ``CrystalGraphConvNet`` regression model, MSE on normalised targets, ``.item()`` meters every
  step, a validation pass), on inputs cached after the first epoch (CGCNN's ``CIFData`` keeps
  them in an ``lru_cache``), built here from the same graph cache as ours.
* ``ours (per-crystal collate)``: ``crystaltwins`` fine-tuning (Lightning trainer with its
  checkpoints, logs and history, the fused CPU kernel where it was measured faster) with batches collated crystal by crystal,
  as before the batch gather existed.
* ``ours``: the same with batches gathered by array arithmetic (:mod:`crystaltwins.data.gather`).
* ``ours, model steps alone``: the floor of the two above: forward, backward and Adam steps (and the
  validation forward) on batches gathered beforehand, in a plain loop (CPU only).
* ``ours, ENCODER`` (``--encoders gin gatgnn ogcnn``): ``ours`` with that encoder (its defaults,
  as ``crystaltwins finetune --from-scratch --encoder ENCODER`` builds it), each compared with
  ``ours`` (CGCNN) of the same run; ``--ours-only`` leaves out the reference, the per-crystal
  collate and the floor.

Every run trains for ``--epochs`` epochs on the same split; the median of the epochs after the
first is reported. Run::

    python benchmarks/bench_finetune_epoch.py --data-root ../shared/data \\
        --reference ../shared/reference/crystal_twins [--epochs 4] [--threads 2] \\
        [--encoders gin gatgnn ogcnn] [--ours-only]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import GaussianDistance, add_data_arguments  # noqa: E402
from bench_model_step import RefCGCNN  # noqa: E402

from crystaltwins.data.cache import GraphCache, build_graph_cache  # noqa: E402
from crystaltwins.data.dataset import CrystalGraphDataset, GraphCollator  # noqa: E402
from crystaltwins.graph.atom_features import AtomFeaturizer  # noqa: E402
from crystaltwins.models.heads import PropertyHead  # noqa: E402
from crystaltwins.models.property_model import PropertyModel, Target  # noqa: E402
from crystaltwins.training.common import make_trainer, new_encoder  # noqa: E402
from crystaltwins.training.finetune import FinetuneModule  # noqa: E402
from crystaltwins.training.sampling import EpochSampler  # noqa: E402

BATCH = 128
M = 12


# --------------------------------------------------------------------------- reference CGCNN
class RefCrystalGraphConvNet(RefCGCNN):
    """CGCNN's ``CrystalGraphConvNet`` (regression, ``n_h=1``): the encoder of the benchmark's
    reference CGCNN with one linear output as its head (CGCNN calls it ``fc_out``)."""

    def __init__(self, orig_atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__(orig_atom_fea_len, nbr_fea_len)
        self.fc_head = nn.Linear(128, 1)


def collate_pool(dataset_list):
    """CGCNN's ``collate_pool``, verbatim but for the unused cif ids."""
    batch_atom_fea, batch_nbr_fea, batch_nbr_fea_idx = [], [], []
    crystal_atom_idx, batch_target = [], []
    base_idx = 0
    for (atom_fea, nbr_fea, nbr_fea_idx), target in dataset_list:
        n_i = atom_fea.shape[0]
        batch_atom_fea.append(atom_fea)
        batch_nbr_fea.append(nbr_fea)
        batch_nbr_fea_idx.append(nbr_fea_idx + base_idx)
        crystal_atom_idx.append(torch.LongTensor(np.arange(n_i) + base_idx))
        batch_target.append(target)
        base_idx += n_i
    return (
        (
            torch.cat(batch_atom_fea, dim=0),
            torch.cat(batch_nbr_fea, dim=0),
            torch.cat(batch_nbr_fea_idx, dim=0),
            crystal_atom_idx,
        ),
        torch.stack(batch_target, dim=0),
    )


def reference_items(cache: GraphCache, rows: np.ndarray, table: np.ndarray, radius: float):
    """CGCNN ``CIFData`` items (padded to 12 neighbours as CGCNN pads) of cache ``rows``."""
    gaussian = GaussianDistance(0.0, radius, 0.2)  # CGCNN's: float64 exp, then float32
    items = []
    for row in rows.tolist():
        g = cache.graph(row)
        n = g.num_atoms
        idx = np.zeros((n, M), dtype=np.int64)
        dist = np.full((n, M), radius + 1.0)
        for i in range(n):
            mine = g.edges.src == i
            k = int(mine.sum())
            idx[i, :k] = g.edges.dst[mine][:M]
            dist[i, :k] = g.edges.distance[mine][:M]
        nbr_fea = torch.Tensor(gaussian.expand(dist))  # as CIFData: (n, M, 41) float32
        atom_fea = torch.from_numpy(table[g.atomic_numbers.astype(np.int64)]).float()
        target = torch.tensor([float(g.labels["y"])])
        items.append(((atom_fea, nbr_fea, torch.from_numpy(idx)), target))
    return items


def _to(inputs, device: str):
    """CGCNN's ``main.py`` moves every batch to the GPU like this."""
    if device == "cpu":
        return inputs
    atom_fea, nbr_fea, nbr_fea_idx, crystal_atom_idx = inputs
    return (
        atom_fea.to(device, non_blocking=True),
        nbr_fea.to(device, non_blocking=True),
        nbr_fea_idx.to(device, non_blocking=True),
        [i.to(device, non_blocking=True) for i in crystal_atom_idx],
    )


def reference_epochs(
    train_items, val_items, n_features: int, epochs: int, device: str = "cpu"
) -> list[float]:
    model = RefCrystalGraphConvNet(n_features, train_items[0][0][1].shape[-1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    criterion = nn.MSELoss()
    targets = torch.cat([t for _, t in train_items])
    mean, std = targets.mean().to(device), targets.std().to(device)
    train_loader = DataLoader(train_items, batch_size=BATCH, shuffle=True, collate_fn=collate_pool)
    val_loader = DataLoader(val_items, batch_size=BATCH, collate_fn=collate_pool)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        losses, maes = [], []
        for inputs, target in train_loader:
            inputs, target = _to(inputs, device), target.to(device, non_blocking=True)
            output = model(*inputs)
            loss = criterion(output, (target - mean) / std)
            maes.append(((output * std + mean) - target).abs().mean().item())
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for inputs, target in val_loader:
                inputs, target = _to(inputs, device), target.to(device, non_blocking=True)
                output = model(*inputs)
                maes.append(((output * std + mean) - target).abs().mean().item())
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- ours
class _PerCrystal(CrystalGraphDataset):
    """Batches collated crystal by crystal (the path before the batch gather)."""

    __getitems__ = None  # type: ignore[assignment]


class EpochTimes(L.Callback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return np.diff(self.marks).tolist()


def our_epochs(
    cache,
    featurizer,
    train_rows,
    val_rows,
    epochs,
    per_crystal,
    out,
    accelerator="cpu",
    encoder_name="cgcnn",
) -> list[float]:
    kind = _PerCrystal if per_crystal else CrystalGraphDataset
    train, val = kind(cache, train_rows, ["y"]), kind(cache, val_rows, ["y"])
    if accelerator == "gpu" and not per_crystal:  # what fine-tuning does on a GPU
        train, val = train.to_device("cuda"), val.to_device("cuda")
    torch.manual_seed(0)
    encoder = new_encoder(featurizer, cache.settings, name=encoder_name)
    y = cache.labels(["y"])[train_rows, 0]
    target = Target("y", mean=float(y.mean()), std=float(y.std()))
    module = FinetuneModule(
        PropertyModel(encoder, PropertyHead(encoder.out_dim, encoder.out_dim, 1), target)
    )
    clock = EpochTimes()
    trainer = make_trainer(
        Path(out),
        epochs=epochs,
        monitor="val_mae",
        accelerator=accelerator,
        precision="32-true",
        progress=False,
        callbacks=[clock],
    )
    collate = GraphCollator(["y"])
    trainer.fit(
        module,
        DataLoader(
            train,
            batch_size=BATCH,
            sampler=EpochSampler(len(train), seed=0, with_epoch=False),
            collate_fn=collate,
            drop_last=True,
        ),
        DataLoader(
            val,
            batch_size=BATCH,
            sampler=EpochSampler(len(val), shuffle=False, with_epoch=False),
            collate_fn=collate,
        ),
    )
    return clock.times


def model_only_epochs(cache, featurizer, train_rows, val_rows, epochs) -> list[float]:
    """The floor: our model's steps alone (forward, backward, Adam; validation forward) on
    batches gathered beforehand, in a plain loop without Lightning."""
    torch.manual_seed(0)
    encoder = new_encoder(featurizer, cache.settings)
    head = PropertyHead(encoder.out_dim, encoder.out_dim, 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], 1e-3)
    train = CrystalGraphDataset(cache, train_rows, ["y"])
    val = CrystalGraphDataset(cache, val_rows, ["y"])
    train_batches = [
        train.__getitems__(list(range(k, k + BATCH)))
        for k in range(0, len(train) - BATCH + 1, BATCH)
    ]
    val_batches = [
        val.__getitems__(list(range(k, min(k + BATCH, len(val)))))
        for k in range(0, len(val), BATCH)
    ]
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        encoder.train(), head.train()
        for batch in train_batches:
            loss = nn.functional.mse_loss(head(encoder(batch))[:, 0], batch.targets[:, 0])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        encoder.eval(), head.eval()
        with torch.no_grad():
            for batch in val_batches:
                head(encoder(batch))
        times.append(time.perf_counter() - start)
    return times


def subset_csv(source: Path, column: str, n: int | None, out: Path) -> Path:
    csv.field_size_limit(2**31 - 1)
    with gzip.open(source, "rt", newline="") as src, gzip.open(out, "wt", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["id", "cif", "y"])
        for row in itertools.islice(csv.DictReader(src), n):
            writer.writerow([row["id"], row["cif"], row[column]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sets",
        nargs="+",
        default=["perovskites:e_form:4000", "mp36k:formation_energy_per_atom:1500"],
        help="FILE:COLUMN:CRYSTALS (CRYSTALS 'all' for the whole file), each split 3:1 into "
        "training and validation",
    )
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=[],
        metavar="ENCODER",
        help="also time 'ours' with these registered encoders (beside CGCNN's)",
    )
    parser.add_argument(
        "--ours-only",
        action="store_true",
        help="time only 'ours' (and --encoders): no reference, per-crystal collate or floor",
    )
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args()
    if args.ours_only:
        args.skip_reference = True
    torch.set_num_threads(args.threads)
    featurizer = AtomFeaturizer.from_json(Path(args.reference) / "atom_init.json")
    table = np.asarray(featurizer.table)
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    print(
        f"torch {torch.__version__}, {device}, {args.threads} threads, batch {BATCH}, "
        f"{args.epochs} epochs, {time.strftime('%Y-%m-%d')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.sets:
            name, column, n = spec.split(":")
            path = subset_csv(
                Path(args.data_root) / f"{name}.csv.gz",
                column,
                None if n == "all" else int(n),
                Path(tmp) / f"{name}.csv.gz",
            )
            build_graph_cache(
                path, Path(tmp) / f"cache-{name}", workers=os.cpu_count() or 1, progress=False
            )
            cache = GraphCache(Path(tmp) / f"cache-{name}")
            rows = np.random.default_rng(0).permutation(len(cache))
            n_train = len(rows) * 3 // 4
            train_rows, val_rows = np.sort(rows[:n_train]), np.sort(rows[n_train:])
            results = {}
            if not args.skip_reference:
                ref = reference_epochs(
                    reference_items(cache, train_rows, table, cache.settings.radius),
                    reference_items(cache, val_rows, table, cache.settings.radius),
                    table.shape[1],
                    args.epochs,
                    "cuda" if args.accelerator == "gpu" else "cpu",
                )
                results["reference CGCNN loop"] = ref
            ours = (
                [("ours", False)]
                if args.ours_only
                else [("ours, per-crystal collate", True), ("ours", False)]
            )
            for label, per_crystal in ours:
                results[label] = our_epochs(
                    cache,
                    featurizer,
                    train_rows,
                    val_rows,
                    args.epochs,
                    per_crystal,
                    Path(tmp) / f"run-{name}-{per_crystal}",
                    args.accelerator,
                )
            for encoder in args.encoders:
                results[f"ours, {encoder}"] = our_epochs(
                    cache,
                    featurizer,
                    train_rows,
                    val_rows,
                    args.epochs,
                    False,
                    Path(tmp) / f"run-{name}-{encoder}",
                    args.accelerator,
                    encoder,
                )
            if args.accelerator == "cpu" and not args.ours_only:
                results["ours, model steps alone (floor)"] = model_only_epochs(
                    cache, featurizer, train_rows, val_rows, args.epochs
                )
            print(
                f"\n{name}: {len(cache)} crystals ({len(train_rows)} train + {len(val_rows)} val)"
            )
            base = (
                statistics.median(results["reference CGCNN loop"][1:])
                if not args.skip_reference
                else None
            )
            cgcnn = statistics.median(results["ours"][1:])
            for label, times in results.items():
                med = statistics.median(times[1:])
                ratio = f"  {base / med:.2f}x the reference" if base else ""
                if label.startswith("ours, ") and label[6:] in args.encoders:
                    ratio += f"  {med / cgcnn:.2f}x CGCNN's epoch"
                print(
                    f"  {label:28s} {med:.3f} s/epoch (epochs: {', '.join(f'{t:.2f}' for t in times)}){ratio}"
                )


if __name__ == "__main__":
    main()
