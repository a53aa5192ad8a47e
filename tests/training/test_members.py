"""Members trained together (one process, one loop, stacked parameters) on real perovskites:
the same losses, best-validation weights and BatchNorm statistics as each member trained alone
with ``FinetuneModule``'s step and ``torch.optim.Adam`` (whole runs: tests/evaluation/test_runs_together.py)."""

from __future__ import annotations

import copy
import csv
import gzip
import itertools
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.data.dataset import CrystalGraphDataset
from crystaltwins.data.splits import random_split
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.models.grouped import MemberBatch, stack_models
from crystaltwins.models.heads import PropertyHead
from crystaltwins.models.property_model import PropertyModel, Target
from crystaltwins.training.common import adam, new_encoder
from crystaltwins.training.configs import FinetuneConfig
from crystaltwins.training.finetune import FinetuneModule, LearningRateSchedule
from crystaltwins.training.members import (
    MemberData,
    _batches,
    check_together,
    train_together,
)

CRYSTALS = 150
BATCH = 32
EPOCHS = 3
#: small sizes (atom_fea_len, n_conv, h_fea_len) where the encoder takes them; GIN and GATGNN at
#: their defaults
SIZES = {"cgcnn": (16, 2, 24), "ogcnn": (16, 2, 24)}
#: GIN (128 wide, 5 layers) diverges at first at 1e-2 on these 90 crystals
LEARNING_RATE = {"gin": 1e-3}
#: a bias just before a BatchNorm, whose gradient is zero in exact arithmetic, and that
#: BatchNorm's running mean, by encoder
_CGCNN_BEFORE_BN = r"convs\.\d+\.(fc_full\.bias|bn1\.running_mean)$"
BEFORE_BATCH_NORM = {
    "cgcnn": _CGCNN_BEFORE_BN,
    "ogcnn": _CGCNN_BEFORE_BN,
    "gin": r"(mlps\.\d+\.2\.bias|batch_norms\.\d+\.running_mean)$",
    "gatgnn": r"(node_att\.\d+\.bias|batch_norm\.\d+\.running_mean)$",
}


@pytest.fixture(scope="module")
def perovskites_150(perovskite_subset, tmp_path_factory) -> Path:
    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("data") / "perovskites_150.csv"
    with gzip.open(perovskite_subset, "rt", newline="") as src, open(path, "w", newline="") as dst:
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), CRYSTALS + 1))
    return path


@pytest.fixture(scope="module")
def featurizer() -> AtomFeaturizer:
    return AtomFeaturizer.builtin()


@pytest.fixture(scope="module")
def cache(perovskites_150, featurizer, tmp_path_factory) -> GraphCache:
    out = tmp_path_factory.mktemp("members_cache") / "cache"
    build_graph_cache(perovskites_150, out, featurizer=featurizer, progress=False)
    return GraphCache(out)


class _Targets(CrystalGraphDataset):
    def __init__(self, cache: GraphCache, indices: np.ndarray, values: np.ndarray) -> None:
        super().__init__(cache, indices)
        self.values = values

    def target_values(self) -> np.ndarray:
        return self.values


def _members(
    cache: GraphCache, featurizer: AtomFeaturizer, dtype: torch.dtype, encoder: str = "cgcnn"
) -> list[MemberData]:
    """Three members: own split (split seeds 0, 1, 2), own seed, own initialisation; member 1
    with another encoder learning-rate factor and weight decay, as CT vs scratch differ."""
    values = cache.labels(["e_form"])[:, 0].astype(np.float64)
    members = []
    for k in range(3):
        split = random_split(len(cache), (0.6, 0.2, 0.2), seed=k)
        L.seed_everything(10 + k, verbose=False)
        network = new_encoder(featurizer, cache.settings, *SIZES.get(encoder, ()), name=encoder)
        y = values[split.train]
        target = Target("e_form", mean=float(y.mean()), std=float(y.std()))
        module = FinetuneModule(
            PropertyModel(network, PropertyHead(network.out_dim, 12, 1), target),
            lr=LEARNING_RATE.get(encoder, 1e-2),
            encoder_lr_factor=0.2 if k == 1 else 1.0,
            weight_decay=1e-4 if k == 1 else 0.0,
        ).to(dtype)
        members.append(
            MemberData(
                module,
                _Targets(cache, split.train, values),
                _Targets(cache, split.val, values),
                seed=10 + k,
            )
        )
    return members


def _alone(
    member: MemberData, dtype: torch.dtype, schedule: dict | None = None
) -> tuple[list[dict], dict, int]:
    """One member trained by itself: ``FinetuneModule._step`` and its own ``Adam``, on the
    batches a ``DataLoader`` over ``EpochSampler`` gives it; best-validation weights kept.
    ``schedule`` (``warmup_epochs``, ``lr_schedule``): a ``LambdaLR`` of
    ``learning_rate_factor`` stepped after every optimiser step, as the single run's."""
    module = member.module
    optimizer = adam(module.param_groups(), lr=module.lr, weight_decay=module.weight_decay)
    if dtype == torch.float32:
        # The run's fused Adam and StackedAdam round differently, and fc_full's bias gradient is
        # rounding noise that Adam amplifies (see below): in float32 compare with the foreach
        # implementation, whose operation order StackedAdam follows. float64 compares with the
        # run's own optimizer.
        groups = [
            {k: v for k, v in g.items() if k not in ("fused", "foreach")}
            for g in optimizer.param_groups
        ]
        optimizer = torch.optim.Adam(groups, foreach=True)
    scheduler = None
    if schedule:
        per_epoch = len(_batches(len(member.train), BATCH, member.seed, 0, True))
        factor = LearningRateSchedule(
            warmup_steps=schedule["warmup_epochs"] * per_epoch,
            total_steps=EPOCHS * per_epoch,
            schedule=schedule["lr_schedule"],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    history, best, best_state, best_epoch = [], float("inf"), None, None

    def batch_of(dataset, positions):
        batch = dataset.__getitems__(positions)
        batch.targets = batch.targets.to(dtype)
        return batch

    for epoch in range(EPOCHS):
        module.train()
        for positions in _batches(len(member.train), BATCH, member.seed, epoch, True):
            loss = module._step(batch_of(member.train, positions), "train")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        module.eval()
        with torch.no_grad():
            for positions in _batches(len(member.val), BATCH, 0, 0, False):
                module._step(batch_of(member.val, positions), "val")
        row = {}
        for stage in ("train", "val"):
            means = module.epoch_metrics.pop_means(stage)
            row.update({f"{stage}_{n}": float(means[n]) for n in ("loss", "mae")})
        history.append(row)
        if row["val_mae"] < best:
            best, best_epoch = row["val_mae"], epoch
            best_state = copy.deepcopy(module.state_dict())
    return history, best_state, best_epoch


@pytest.mark.parametrize(
    "dtype,rtol,val_rtol,encoder",
    [
        (torch.float64, 1e-9, 2e-7, "cgcnn"),
        (torch.float32, 1e-5, 2e-2, "cgcnn"),
        (torch.float64, 1e-9, 2e-7, "ogcnn"),
        (torch.float64, 1e-9, 2e-7, "gin"),
        (torch.float64, 1e-9, 2e-7, "gatgnn"),
        (torch.float64, 1e-9, 2e-7, "cgcnn-scheduled"),
    ],
    ids=["float64", "float32", "ogcnn-float64", "gin-float64", "gatgnn-float64", "cosine"],
)
def test_together_equals_alone(cache, featurizer, dtype, rtol, val_rtol, encoder):
    """K=3 members with different splits, seeds and learning rates: epoch losses and MAEs,
    best epochs, and the best weights with BatchNorm running statistics all agree.

    float32 validation metrics get a loose tolerance: fc_full's bias comes before a BatchNorm, its
    gradient is rounding noise that Adam (lr 1e-2 here) turns into steps of the learning rate, and
    the running mean, which eval mode uses, lags behind them. How far that takes a validation loss
    depends on the CPU's rounding: up to 1.2e-3 between the two paths on the development VM, 5.6e-3
    on CI's. float64 checks the validation computation itself (2e-7).

    ``cgcnn-scheduled``: CGCNN with a warm-up epoch, then a cosine decay of every learning rate
    (a single run's ``LambdaLR`` against the members' factor at each step)."""
    schedule = None
    if encoder == "cgcnn-scheduled":
        encoder, schedule = "cgcnn", dict(warmup_epochs=1, lr_schedule="cosine")
    members = _members(cache, featurizer, dtype, encoder)
    alone = [_alone(copy.deepcopy(m), dtype, schedule) for m in members]
    exact = [None] * len(members)
    if dtype == torch.float32:  # each member's float64 run: where float32 rounding alone takes it
        exact = [
            _alone(m, torch.float64) for m in _members(cache, featurizer, torch.float64, encoder)
        ]
    results = train_together(members, EPOCHS, BATCH, dtype=dtype, **(schedule or {}))
    for member, result, (history, best_state, best_epoch), reference in zip(
        members, results, alone, exact, strict=True
    ):
        for got, want in zip(result.history, history, strict=True):
            for name, value in want.items():
                # the single run's EpochMeans sums in float32: 1e-7 at best
                tol = val_rtol if name.startswith("val") else max(rtol, 2e-7)
                assert got[name] == pytest.approx(value, rel=tol), name
        if reference is not None:  # both float32 runs near where float64 takes the member
            for got, want in zip(result.history, reference[0], strict=True):
                for name, value in want.items():
                    tol = val_rtol if name.startswith("val") else 1e-5
                    assert got[name] == pytest.approx(value, rel=tol), name
        if dtype == torch.float32 and result.best_epoch != best_epoch:
            continue  # a near-tie of validation MAEs broken the other way by rounding
        assert result.best_epoch == best_epoch
        state = dict(member.module.state_dict())
        assert set(state) == set(best_state)
        if dtype == torch.float32:
            # fc_full's bias comes before a BatchNorm: its gradient is rounding noise, which Adam
            # scales to steps of the learning rate, and the edge BatchNorm's running mean follows
            # it; the single-model path's own float32 run differs from its float64 run there as
            # much. Both are compared in float64 above.
            for conv in ("encoder.convs.0", "encoder.convs.1"):
                for s in (state, best_state):
                    del s[f"{conv}.fc_full.bias"], s[f"{conv}.bn1.running_mean"]
        for name, want in best_state.items():
            got = state[name]
            assert got.dtype == want.dtype, name
            if want.is_floating_point():
                scale = float(want.abs().max()) or 1.0
                allowed = torch.full_like(want, 10 * rtol * scale, dtype=torch.float64)
                if re.search(BEFORE_BATCH_NORM[encoder], name):
                    # float64 too: the bias gradient is rounding noise (1e-16 to 1e-13) that
                    # Adam turns into steps of lr * noise / eps (1e-10 to 1e-7) each, in either
                    # path alike
                    allowed = allowed.clamp_min(1e-6)
                if reference is not None and reference[2] == best_epoch:
                    # float32: besides the floor, as far from the float64 run as the single
                    # path is itself (Adam turns a near-zero gradient's rounding into steps of
                    # the learning rate, in either path: a BatchNorm bias channel at times)
                    own_error = (want.double() - reference[1][name]).abs()
                    allowed = torch.maximum(allowed, 2 * own_error)
                deviation = (got.double() - want.double()).abs()
                assert bool((deviation <= allowed).all()), (name, float(deviation.max()))
            else:
                assert torch.equal(got, want), name  # num_batches_tracked
    # the members did learn and differ (not a comparison of untouched copies)
    first = [r.history[0]["train_loss"] for r in results]
    assert len(set(first)) == 3
    assert all(r.history[-1]["train_loss"] < r.history[0]["train_loss"] for r in results)


@pytest.mark.parametrize("encoder", ["cgcnn", "ogcnn", "gin", "gatgnn"])
def test_padding_does_not_leak(cache, featurizer, encoder):
    """A member's outputs do not depend on the other members' batch sizes (padding: for OGCNN,
    padded edges of distance 0 must not enter the orbital field; for GATGNN, padded edges and
    atoms must not enter the softmaxes)."""
    members = _members(cache, featurizer, torch.float64, encoder)
    model = stack_models([m.module.encoder for m in members], [m.module.head for m in members]).to(
        dtype=torch.float64
    )
    small = members[0].train.__getitems__(np.arange(5))
    big = members[1].train.__getitems__(np.arange(40))
    model.eval()
    with torch.no_grad():
        alone = model(MemberBatch.stack([small, small, small], torch.float64))[0, :5]
        padded = model(MemberBatch.stack([small, big, big], torch.float64))[0, :5]
    assert torch.allclose(alone, padded, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def mp_cache(data_dir, featurizer, tmp_path_factory) -> GraphCache:
    """The first 60 MP crystals: 1 to 60 atoms per cell, so member batches pad."""
    csv.field_size_limit(2**31 - 1)
    folder = tmp_path_factory.mktemp("mp60")
    path = folder / "mp60.csv"
    with (
        gzip.open(data_dir / "mp36k.csv.gz", "rt", newline="") as src,
        open(path, "w", newline="") as dst,
    ):
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), 61))
    build_graph_cache(path, folder / "cache", featurizer=featurizer, progress=False)
    return GraphCache(folder / "cache")


@pytest.mark.parametrize("encoder", ["cgcnn", "ogcnn", "gin", "gatgnn"])
def test_padded_members_equal_single_models(mp_cache, featurizer, encoder):
    """Members whose batches differ in crystals, atoms and edges (so every member but the
    largest is padded): in training mode the outputs, every parameter's gradient and the
    BatchNorm running statistics after the step equal each member's own model (float64); in eval
    mode too, with a member that has no crystals at all (a validation step past its end)."""
    from crystaltwins.training.members import _empty_like

    dataset = CrystalGraphDataset(mp_cache, np.arange(len(mp_cache)))
    batches = [dataset.__getitems__(np.arange(a, b)) for a, b in ((0, 6), (10, 30), (30, 41))]
    assert len({(b.num_atoms, b.num_edges, b.num_crystals) for b in batches}) == 3
    torch.manual_seed(0)
    encoders = [
        new_encoder(featurizer, mp_cache.settings, *SIZES.get(encoder, ()), name=encoder)
        for _ in batches
    ]
    heads = [PropertyHead(e.out_dim, 12, 1) for e in encoders]
    singles = [
        (copy.deepcopy(e).double(), copy.deepcopy(h).double())
        for e, h in zip(encoders, heads, strict=True)
    ]
    model = stack_models(encoders, heads).to(dtype=torch.float64)
    stacked = MemberBatch.stack(batches, torch.float64)
    out = model(stacked)
    (out[..., 0].square() * stacked.crystal_mask).sum().backward()
    states = [model.member_state(k) for k in range(len(batches))]
    for k, ((enc, head), batch) in enumerate(zip(singles, batches, strict=True)):
        alone = head(enc(batch))
        assert torch.allclose(out[k, : batch.num_crystals], alone, rtol=1e-10, atol=1e-12)
        alone[:, 0].square().sum().backward()
        for name, param in enc.named_parameters():
            got = model.params[f"encoder.{name}"].grad[k]
            scale = float(param.grad.abs().max())
            assert torch.allclose(got, param.grad, rtol=0, atol=1e-9 * max(scale, 1e-3)), name
        for name, value in enc.state_dict().items():
            if "running" in name or "tracked" in name:
                assert torch.allclose(states[k][0][name].to(value.dtype), value, rtol=1e-12), name
    model.eval()
    for enc, head in singles:
        enc.eval(), head.eval()
    with torch.no_grad():
        parts = [batches[0], _empty_like(batches[0]), batches[2]]
        out = model(MemberBatch.stack(parts, torch.float64))
        assert torch.isfinite(out).all()
        for k in (0, 2):
            enc, head = singles[k]
            want = head(enc(parts[k]))
            assert torch.allclose(out[k, : parts[k].num_crystals], want, rtol=1e-10, atol=1e-12)


def test_unequal_batch_counts_refused(cache, featurizer):
    members = _members(cache, featurizer, torch.float32)
    members[2].train = members[2].train.subset(np.arange(20))
    with pytest.raises(ValueError, match="same number of training batches"):
        train_together(members, 1, BATCH)


def test_check_together_refuses_mixed_settings(tmp_path):
    def config(**kw):
        return FinetuneConfig(data="x", target="y", out=str(tmp_path), from_scratch=True, **kw)

    with pytest.raises(ValueError, match="same epochs"):
        check_together([config(epochs=2), config(epochs=3)])
    with pytest.raises(ValueError, match="early stopping"):
        check_together([config(early_stopping=3)])
    for knob, value in (("freeze_encoder_epochs", 1), ("encoder_anchor", 0.1)):
        with pytest.raises(ValueError, match=f"take no {knob}"):
            check_together([config(), config(**{knob: value})])
    with pytest.raises(ValueError, match="same warmup_epochs"):
        check_together([config(), config(warmup_epochs=1)])
    with pytest.raises(ValueError, match="same lr_schedule"):
        check_together([config(), config(lr_schedule="cosine")])
    scheduled = dict(warmup_epochs=1, lr_schedule="cosine")
    check_together([config(**scheduled), config(**scheduled)])  # one schedule for all: trains
    # they would train in float32 all the same; "foo" did too, silently
    for mixed in ("16-mixed", "bf16-mixed", "foo", "16"):
        with pytest.raises(ValueError, match=f"precision {mixed} is not supported"):
            check_together([config(precision=mixed)])
    check_together([config(precision="32-true"), config(precision="32-true")])
    check_together([config(precision="64-true")])
    check_together([config(precision=None)])  # the default
