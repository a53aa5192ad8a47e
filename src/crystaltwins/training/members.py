"""Many fine-tuning runs in one process: K members trained together, one step for all.

Each member is an ordinary fine-tuning run (:class:`~crystaltwins.training.finetune.FinetuneConfig`:
its own data split, seed, initialisation, learning rates, BatchNorm statistics and run folder);
:func:`train_together` stacks their models (:func:`~crystaltwins.models.grouped.stack_models`)
and trains them in one loop: at every step each member draws its next batch from its own training
crystals, in the order a separate run draws them (:class:`~crystaltwins.training.sampling.EpochSampler`
with the member's seed), the batches are padded and stacked, and one forward, one backward and one
Adam step (:class:`StackedAdam`, per-member learning rates) update every member. A member's loss
depends only on its own parameters, so the step computes what K separate steps compute (tests
compare them). Validation runs after every epoch; each member keeps its best-validation weights,
as the Lightning run's ``best.ckpt`` does.

:func:`train_runs_together` trains whole fine-tuning runs this way: each is set up as a single
run (:func:`~crystaltwins.training.finetune.prepare_run`: ``config.yaml``, seeds, cache, split,
model), writes its ``history.csv`` every epoch, and comes back as a
:class:`~crystaltwins.training.finetune.TrainedRun` with its best weights loaded;
:func:`crystaltwins.evaluation.runs.finetune_together` then reports each as any single run
(``metrics.json``, ``test_predictions.csv``, ``model.pt``, an ensemble member's
``member_predictions.npz``), so the ensemble and benchmark code combine them as usual.

Limits: every member runs the same number of epochs and training batches per epoch (same
training-set size and batch size), without early stopping; training is in full precision (float32,
or float64 with ``precision="64-true"``) on one device; an unfinished run is not resumed
mid-training (finished members are kept, see :mod:`crystaltwins.training.ensemble`). On a CPU the
single-run path, with its fused kernel, is faster per member (``benchmarks/bench_members.py``);
together pays on an accelerator, where one run leaves the device idle.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crystaltwins.data.dataset import CrystalGraphDataset
from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.io.atomic import atomic_path
from crystaltwins.models.grouped import GROUPED_ENCODERS, MemberBatch, stack_models
from crystaltwins.training.common import resident_device
from crystaltwins.training.configs import FinetuneConfig
from crystaltwins.training.finetune import (
    FinetuneModule,
    LearningRateSchedule,
    TrainedRun,
    prepare_run,
)
from crystaltwins.training.sampling import EpochSampler

#: Adam's defaults, as ``torch.optim.Adam`` (what a single fine-tuning run uses).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class StackedAdam:
    """``torch.optim.Adam`` (no amsgrad) over stacked ``(K, ...)`` parameters, member ``k``
    with its own learning rate and L2 weight decay; every member steps at every step.

    :param params: name → ``(K, ...)`` leaf tensors.
    :param lr: name → ``(K,)`` learning rate of every member for that tensor.
    :param weight_decay: ``(K,)`` L2 penalty of every member (added to the gradient, as Adam).
    """

    def __init__(
        self,
        params: dict[str, torch.Tensor],
        lr: dict[str, torch.Tensor],
        weight_decay: torch.Tensor,
        betas: tuple[float, float] = ADAM_BETAS,
        eps: float = ADAM_EPS,
    ) -> None:
        self.params = params
        self.betas = betas
        self.eps = eps
        self.steps = 0

        def shaped(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return v.to(p.device, p.dtype).view(-1, *([1] * (p.ndim - 1)))

        self.lr = {n: shaped(lr[n], p) for n, p in params.items()}
        self.weight_decay = {n: shaped(weight_decay, p) for n, p in params.items()}
        self.decay = bool((weight_decay != 0).any())
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """One Adam step of every member, each learning rate times ``lr_factor`` (a schedule's
        factor at this step; a Python float, so nothing crosses to the device)."""
        self.steps += 1
        beta1, beta2 = self.betas
        bias1 = 1 - beta1**self.steps
        bias2_sqrt = math.sqrt(1 - beta2**self.steps)
        for name, p in self.params.items():
            grad = p.grad
            if grad is None:
                continue
            if self.decay:
                grad = grad.add(p * self.weight_decay[name])
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            lr = self.lr[name] if lr_factor == 1.0 else self.lr[name] * lr_factor
            p.sub_(m * (lr / bias1) / denom)


@dataclass
class MemberData:
    """What :func:`train_together` needs of one member.

    :param module: its model (encoder, head, target standardisation, task, learning rates).
    :param train: its training crystals; :param val: its validation crystals.
    :param seed: seed of its batch order (a separate run's ``config.seed``).
    :param history: where to write its ``history.csv`` every epoch (``None``: nowhere).
    """

    module: FinetuneModule
    train: CrystalGraphDataset
    val: CrystalGraphDataset
    seed: int
    history: Path | None = None


@dataclass
class MemberResult:
    """One member's training: ``history`` (one dict per epoch), ``best_epoch`` (0-based, the
    epoch of its lowest validation MAE, first one on ties) and its weights loaded into its
    module are those of that epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None


def _member_lrs(module: FinetuneModule) -> tuple[float, float]:
    """(encoder, head) learning rates of a module, as its optimiser's groups start them."""
    groups = module.param_groups()
    return float(groups[0]["lr"]), float(groups[1]["lr"])


def _batches(size: int, batch_size: int, seed: int, epoch: int, shuffle: bool) -> list[np.ndarray]:
    """The positions of every batch of an epoch, as a separate run's ``DataLoader`` over
    :class:`EpochSampler` makes them (training: ``drop_last`` when there is more than one
    batch)."""
    sampler = EpochSampler(size, shuffle=shuffle, seed=seed, with_epoch=False)
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
    if shuffle:
        batch_size = min(batch_size, size)
        full = size // batch_size if size > batch_size else 1
        return [order[b * batch_size : (b + 1) * batch_size] for b in range(full)]
    return [order[b : b + batch_size] for b in range(0, size, batch_size)]


def _empty_like(batch: CrystalGraphBatch) -> CrystalGraphBatch:
    """A batch without crystals (a member with no batch left at a validation step)."""
    device = batch.atomic_numbers.device
    return CrystalGraphBatch(
        atomic_numbers=torch.zeros(0, dtype=torch.long, device=device),
        edge_index=torch.zeros(2, 0, dtype=torch.long, device=device),
        edge_distance=torch.zeros(0, device=device),
        crystal_index=torch.zeros(0, dtype=torch.long, device=device),
        num_crystals=0,
        targets=None if batch.targets is None else batch.targets[:0],
    )


class _Losses:
    """Per-member losses and metrics of a stacked batch (the values of ``FinetuneModule._step``)."""

    def __init__(
        self, modules: Sequence[FinetuneModule], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.classification = modules[0].task == "classification"
        if any((m.task == "classification") != self.classification for m in modules):
            raise ValueError("models trained together need the same task")
        targets = [m.model.target for m in modules]
        self.mean = torch.tensor([t.mean for t in targets], device=device, dtype=dtype)
        self.std = torch.tensor([t.std for t in targets], device=device, dtype=dtype)
        self.names = ["loss", "mae"] + (["accuracy"] if self.classification else [])

    def __call__(self, out: torch.Tensor, batch: MemberBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K,)`` losses (each the mean over the member's crystals) and ``(K, M)`` metrics."""
        mask, target = batch.crystal_mask, batch.targets
        count = batch.crystal_counts.clamp_min(1)
        if self.classification:
            k, b, c = out.shape
            per = F.cross_entropy(out.reshape(k * b, c), target.long().view(-1), reduction="none")
            loss = (per.view(k, b) * mask).sum(1) / count
            wrong = ((out.argmax(-1) != target.long()).to(out.dtype) * mask).sum(1) / count
            return loss, torch.stack((loss, wrong, 1 - wrong), dim=1)
        mean, std = self.mean.unsqueeze(1), self.std.unsqueeze(1)
        loss = ((out[..., 0] - (target - mean) / std).square() * mask).sum(1) / count
        mae = ((out[..., 0] * std + mean - target).abs() * mask).sum(1) / count
        return loss, torch.stack((loss, mae), dim=1)


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """``history.csv`` as :class:`~crystaltwins.training.common.EpochHistory` writes it."""
    columns = ["epoch", *sorted({k for r in rows for k in r} - {"epoch"})]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [str(int(row["epoch"]))]
                + [f"{row[c]:.8g}" if c in row else "" for c in columns[1:]]
            )


def train_together(
    members: Sequence[MemberData],
    epochs: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_epoch: Callable[[int, list[MemberResult]], None] | None = None,
    warmup_epochs: int = 0,
    lr_schedule: str = "constant",
) -> list[MemberResult]:
    """Train every member's module for ``epochs`` epochs in one loop (see the module docstring);
    at the end each module holds its best-validation weights (BatchNorm statistics included).

    :param batch_size: crystals per batch, for every member.
    :param warmup_epochs, lr_schedule: every member's learning rates follow
        :class:`~crystaltwins.training.finetune.LearningRateSchedule`, step by step, as a single
        run's do.
    :param device: where the models train; the members' datasets make their batches where their
        stores live (host or this device).
    :param dtype: floating dtype of the parameters and the computation.
    :param on_epoch: called after every epoch with the 0-based epoch and the results so far.
    :raises ValueError: the members do not fit one loop (different numbers of training batches
        per epoch, architectures or tasks).
    """
    if not members:
        return []
    device = torch.device(device)
    modules = [m.module for m in members]
    per_epoch = [len(_batches(len(m.train), batch_size, m.seed, 0, True)) for m in members]
    if len(set(per_epoch)) > 1:
        raise ValueError(
            "models trained together need the same number of training batches per epoch; "
            f"got {per_epoch} (training crystals {[len(m.train) for m in members]}, batch "
            f"{batch_size})"
        )
    kinds = {type(m.encoder) for m in modules}
    if len(kinds) > 1 or not issubclass(next(iter(kinds)), GROUPED_ENCODERS):
        names = sorted(k.__name__ for k in kinds)
        raise ValueError(f"only encoders of one stackable kind train together; got {names}")
    model = stack_models([m.encoder for m in modules], [m.head for m in modules])
    model.to(device, dtype)
    lrs = [_member_lrs(m) for m in modules]
    encoder_lr = torch.tensor([e for e, _ in lrs], dtype=torch.float64)
    head_lr = torch.tensor([h for _, h in lrs], dtype=torch.float64)
    optimizer = StackedAdam(
        model.params,
        {n: encoder_lr if n.startswith("encoder.") else head_lr for n in model.params},
        torch.tensor([float(m.weight_decay) for m in modules], dtype=torch.float64),
    )
    schedule = LearningRateSchedule(
        warmup_steps=warmup_epochs * per_epoch[0],
        total_steps=epochs * per_epoch[0],
        schedule=lr_schedule,
    )
    losses = _Losses(modules, device, dtype)
    k = len(members)
    results = [MemberResult() for _ in members]
    best_mae = torch.full((k,), math.inf, dtype=torch.float64)
    best_state = {n: t.clone() for n, t in model.state().items()}

    def stacked(batches: Sequence[CrystalGraphBatch]) -> MemberBatch:
        return MemberBatch.stack([b.to(device) for b in batches], dtype)

    for epoch in range(epochs):
        model.train()
        sums = torch.zeros(k, len(losses.names) + 1, dtype=torch.float64, device=device)
        orders = [_batches(len(m.train), batch_size, m.seed, epoch, True) for m in members]
        for step in range(per_epoch[0]):
            batch = stacked(
                [m.train.__getitems__(o[step]) for m, o in zip(members, orders, strict=True)]
            )
            loss, values = losses(model(batch), batch)
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step(schedule(epoch * per_epoch[0] + step))
            count = batch.crystal_counts.unsqueeze(1)
            sums += torch.cat((values.detach() * count, count), dim=1)
        train_sums = sums
        model.eval()
        sums = torch.zeros_like(train_sums)
        val_orders = [_batches(len(m.val), batch_size, 0, 0, False) for m in members]
        with torch.no_grad():
            for step in range(max(len(o) for o in val_orders)):
                parts = [
                    m.val.__getitems__(o[step]) if step < len(o) else None
                    for m, o in zip(members, val_orders, strict=True)
                ]
                present = next(p for p in parts if p is not None)
                batch = stacked([_empty_like(present) if p is None else p for p in parts])
                _, values = losses(model(batch), batch)
                count = batch.crystal_counts.unsqueeze(1)
                sums += torch.cat((values * count, count), dim=1)
        both = torch.stack((train_sums, sums)).cpu()  # the epoch's one read-back
        means = both[..., :-1] / both[..., -1:].clamp_min(1)
        val_mae = means[1, :, 1]
        improved = val_mae < best_mae  # strict: the first minimum, as ModelCheckpoint keeps
        if bool(improved.any()):
            best_mae = torch.where(improved, val_mae, best_mae)
            where = improved.to(device)
            for name, value in model.state().items():
                best_state[name][where] = value[where]
        for j, (member, result) in enumerate(zip(members, results, strict=True)):
            row = {"epoch": float(epoch)}
            for s, stage in enumerate(("train", "val")):
                for n, name in enumerate(losses.names):
                    row[f"{stage}_{name}"] = float(means[s, j, n])
            result.history.append(row)
            if bool(improved[j]):
                result.best_epoch = epoch
            if member.history is not None:
                _write_history(member.history, result.history)
        if on_epoch is not None:
            on_epoch(epoch, results)

    for j, module in enumerate(modules):
        encoder_state, head_state = model.member_state(j, best_state)
        dtype_of = {n: t.dtype for n, t in module.state_dict().items()}
        module.encoder.load_state_dict(
            {n: t.to("cpu", dtype_of[f"encoder.{n}"]) for n, t in encoder_state.items()}
        )
        module.head.load_state_dict(
            {n: t.to("cpu", dtype_of[f"head.{n}"]) for n, t in head_state.items()}
        )
    return results


# ---------------------------------------------------------------------------- whole runs
def _device(configs: Sequence[FinetuneConfig]) -> torch.device:
    accelerator = configs[0].accelerator
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError(f"accelerator {accelerator!r}: no CUDA device is available")
        return torch.device("cuda", 0)
    if accelerator not in ("cpu", "auto"):
        raise ValueError(
            f"models trained together run on 'cpu' or 'gpu', not accelerator {accelerator!r}"
        )
    return torch.device("cpu")


#: The precisions runs trained together take (Lightning's names of float32 and float64).
TOGETHER_PRECISIONS = ("32", "32-true", "64", "64-true")


def check_together(configs: Sequence[FinetuneConfig]) -> None:
    """Raise ``ValueError`` (one line) when ``configs`` cannot train in one loop."""
    if not configs:
        raise ValueError("no runs to train together")
    for what in (
        "epochs", "batch_size", "accelerator", "precision", "task", "warmup_epochs", "lr_schedule",
    ):  # fmt: skip
        seen = {getattr(c, what) for c in configs}
        if len(seen) > 1:
            raise ValueError(
                f"runs trained together need the same {what}; got {sorted(map(str, seen))}"
            )
    if any(c.aux_targets for c in configs):
        raise ValueError("runs trained together take no aux_targets (train them one by one)")
    if any(c.early_stopping for c in configs):
        raise ValueError("runs trained together run every epoch: early stopping is not supported")
    for knob in ("freeze_encoder_epochs", "encoder_anchor"):
        if any(getattr(c, knob) for c in configs):
            raise ValueError(f"runs trained together take no {knob} (train them one by one)")
    if any(c.epochs < 1 for c in configs):
        raise ValueError(f"epochs must be at least 1, got {configs[0].epochs}")
    precision = configs[0].precision
    if precision is not None and str(precision) not in TOGETHER_PRECISIONS:
        raise ValueError(
            f"runs trained together train in 32 (or 64) bit: precision {precision} is not "
            f"supported (one of {', '.join(TOGETHER_PRECISIONS)}; or train them one by one)"
        )


def train_runs_together(
    configs: Sequence[FinetuneConfig],
    on_epoch: Callable[[int, list[MemberResult]], None] | None = None,
) -> list[TrainedRun]:
    """Train the fine-tuning runs ``configs`` (different seeds, splits, initialisations, data;
    their run folders claimed) in one process and one loop: each is set up as a single run
    (:func:`~crystaltwins.training.finetune.prepare_run`), writes its ``history.csv`` every
    epoch, and ends with its best validation epoch's weights. Returns one
    :class:`~crystaltwins.training.finetune.TrainedRun` per config, in order (reported as any
    single run: :func:`crystaltwins.evaluation.runs.finetune_together`).

    :param on_epoch: see :func:`train_together`.
    """
    check_together(configs)
    device = _device(configs)
    dtype = torch.float64 if str(configs[0].precision) in ("64", "64-true") else torch.float32
    runs = [prepare_run(c) for c in configs]
    members = []
    for run in runs:
        train, val = run.parts["train"], run.parts["val"]
        resident = resident_device(run.config.accelerator, run.config.data_on_device, train.store)
        if resident is not None:  # batches gathered on the device from arrays copied once
            train, val = train.to_device(resident), val.to_device(resident)
        history = Path(run.config.out) / "history.csv"
        members.append(MemberData(run.module, train, val, run.config.seed, history))
    started = time.perf_counter()
    first = configs[0]
    train_together(
        members, first.epochs, first.batch_size, device, dtype, on_epoch,
        first.warmup_epochs, first.lr_schedule,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    together = {"members": len(runs), "seconds": seconds, "device": str(device)}
    return [
        run.trained(seconds / len(runs), configs[0].epochs, trained_together=together)
        for run in runs
    ]
