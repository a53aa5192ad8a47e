"""Fine-tuning knobs on real perovskites and the shipped encoder: a frozen encoder (linear
probe, then fine-tune), a learning-rate warm-up and an anchor to the pre-trained weights
(L2-SP); they resume exactly; refused where they cannot apply; offered by ``finetune --help``."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from crystaltwins.cli.main import main
from crystaltwins.evaluation.runs import finetune
from crystaltwins.training.common import AtomicCheckpointIO
from crystaltwins.training.finetune import FinetuneConfig, FinetuneModule
from tests.helpers import cpu_finetune_config

FROZEN = 2  # frozen epochs
WARMUP = 2  # warm-up epochs
EPOCHS = 3
LR, FACTOR = 2e-3, 0.5


def _config(source: Path, out: Path, cache_root: Path, **kw) -> FinetuneConfig:
    settings = dict(
        pretrained="crystal-twins",
        epochs=EPOCHS,
        batch_size=16,
        lr=LR,
        encoder_lr_factor=FACTOR,
        freeze_encoder_epochs=FROZEN,
        warmup_epochs=WARMUP,
        plots=False,
        seed=5,
    )
    return cpu_finetune_config(source, out, cache_root, **{**settings, **kw})


@pytest.fixture(scope="module")
def small_perovskites(perovskite_subset, tmp_path_factory) -> Path:
    """The first 100 real perovskites (60 train: 3 steps of 16 an epoch)."""
    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("data") / "perovskites_100.csv"
    with gzip.open(perovskite_subset, "rt", newline="") as src, open(path, "w", newline="") as dst:
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), 101))
    return path


class _Record(L.Callback):
    """The weights (BatchNorm statistics included) before training and after every epoch, and
    the learning rate of each group at every optimiser step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.lrs: list[tuple[int, list[float]]] = []
        self.steps_per_epoch = 0

    def _keep(self, module: L.LightningModule) -> None:
        self.states.append({k: v.detach().clone() for k, v in module.state_dict().items()})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep(pl_module)
        self.steps_per_epoch = trainer.num_training_batches

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep(pl_module)


class _StopAt(L.Callback):
    """A Ctrl-C at the start of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def _interrupted(config: FinetuneConfig, epoch: int) -> FinetuneConfig:
    """Train ``config`` until a Ctrl-C at the start of ``epoch``; returns it set to resume."""
    with pytest.raises(KeyboardInterrupt):
        finetune(config, callbacks=[_StopAt(epoch)])
    config.resume = True
    return config


def _last(out: Path) -> dict:
    return AtomicCheckpointIO().load_checkpoint(out / "checkpoints" / "last.ckpt")


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (or are missing from one side)."""
    return sorted(
        k for k in set(a) | set(b) if k not in a or k not in b or not torch.equal(a[k], b[k])
    )


@pytest.fixture(scope="module")
def knob_run(small_perovskites, cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("knobs") / "run"
    record = _Record()
    finetune(_config(small_perovskites, out, cache_root), callbacks=[record])
    return out, record


def _part(state: dict[str, torch.Tensor], prefix: str, buffers: bool | None = None):
    return {
        k: v
        for k, v in state.items()
        if k.startswith(prefix)
        and (buffers is None or ("running_" in k or "num_batches" in k) == buffers)
    }


def test_frozen_encoder_is_unchanged_while_the_head_learns(knob_run):
    _, record = knob_run
    states = record.states
    assert len(states) == EPOCHS + 1
    assert _part(states[0], "encoder.", buffers=True), "the encoder has BatchNorm statistics"
    for epoch in range(1, FROZEN + 1):  # after frozen epochs 0 .. FROZEN-1
        assert _same_tensors(_part(states[0], "encoder."), _part(states[epoch], "encoder.")) == []
        changed = _same_tensors(_part(states[epoch - 1], "head."), _part(states[epoch], "head."))
        assert changed, f"the head did not learn in frozen epoch {epoch - 1}"
    after = _same_tensors(_part(states[FROZEN], "encoder."), _part(states[-1], "encoder."))
    weights = _part(states[0], "encoder.", buffers=False)
    statistics = _part(states[0], "encoder.", buffers=True)
    assert set(weights) <= set(after), "every encoder weight trains after the frozen epochs"
    assert set(statistics) & set(after), "BatchNorm statistics update after the frozen epochs"


def test_a_shipped_start_is_recorded_by_its_name(knob_run):
    out, _ = knob_run
    assert json.loads((out / "metrics.json").read_text())["init"] == "crystal-twins"


def test_warmup_learning_rates_follow_the_formula(knob_run):
    _, record = knob_run
    per_epoch = record.steps_per_epoch
    assert per_epoch == 3 and len(record.lrs) == EPOCHS * per_epoch
    total = WARMUP * per_epoch
    for step, (global_step, lrs) in enumerate(record.lrs):
        assert global_step == step
        factor = min(1.0, (step + 1) / total)
        assert lrs == pytest.approx([LR * FACTOR * factor, LR * factor], rel=1e-12), step
    assert record.lrs[total - 1][1] == record.lrs[-1][1] == [LR * FACTOR, LR]  # then constant


@pytest.mark.parametrize("stop", [1, FROZEN], ids=["in-frozen-and-warmup", "at-unfreezing"])
def test_resumed_run_equals_uninterrupted(knob_run, small_perovskites, cache_root, tmp_path, stop):
    expected, _ = knob_run
    out = tmp_path / "resumed"
    config = _config(small_perovskites, out, cache_root)
    _interrupted(config, stop)
    assert _last(out)["epoch"] == stop - 1
    finetune(config)
    got, want = _last(out), _last(expected)
    assert _same_tensors(got["state_dict"], want["state_dict"]) == []
    assert got["lr_schedulers"] == want["lr_schedulers"]
    assert got["optimizer_states"][0]["param_groups"] == want["optimizer_states"][0]["param_groups"]


def test_data_parallel_way_of_freezing_makes_the_same_updates(
    knob_run, small_perovskites, cache_root, tmp_path, monkeypatch
):
    """Keeping the encoder's gradients (as DDP needs) and dropping them before each step trains
    exactly as skipping the encoder's backward pass does."""
    expected, _ = knob_run
    monkeypatch.setattr(FinetuneModule, "_freeze_by_requires_grad", lambda self: False)
    out = tmp_path / "ddp-way"
    finetune(_config(small_perovskites, out, cache_root))
    assert _same_tensors(_last(out)["state_dict"], _last(expected)["state_dict"]) == []


def test_defaults_keep_a_plain_adam_and_a_trainable_encoder(
    small_perovskites, cache_root, tmp_path
):
    from crystaltwins.training.finetune import prepare_run

    config = _config(
        small_perovskites, tmp_path / "plain", cache_root, freeze_encoder_epochs=0, warmup_epochs=0
    )
    module = prepare_run(config).module
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert [g["lr"] for g in optimizer.param_groups] == [LR * FACTOR, LR]
    module.on_train_epoch_start()  # no trainer needed: nothing to do
    assert module.encoder.training
    assert all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            dict(pretrained=None, from_scratch=True),
            "freeze_encoder_epochs needs a pre-trained encoder, not from_scratch",
        ),
        (
            dict(ensemble=2, members_together=True),
            "members trained together take no freeze_encoder_epochs",
        ),
        (
            dict(pretrained=None, from_scratch=True, freeze_encoder_epochs=0, encoder_anchor=1.0),
            "encoder_anchor needs a pre-trained encoder, not from_scratch",
        ),
        (
            dict(
                ensemble=2,
                members_together=True,
                freeze_encoder_epochs=0,
                warmup_epochs=0,
                encoder_anchor=1.0,
            ),
            "members trained together take no encoder_anchor",
        ),
        (dict(lr_schedule="step"), "lr_schedule must be one of constant, cosine, got 'step'"),
        (dict(encoder_anchor=-1.0), "encoder_anchor must be a finite number >= 0, got -1.0"),
        (dict(encoder_anchor=float("nan")), "encoder_anchor must be a finite number >= 0, got nan"),
        (dict(freeze_encoder_epochs=-1), "freeze_encoder_epochs must be at least 0, got -1"),
        (dict(warmup_epochs=1.5), "warmup_epochs must be a whole number >= 0, got 1.5"),
        (
            dict(warmup_epochs=EPOCHS + 1),
            f"warmup_epochs \\(4\\) is more than epochs \\({EPOCHS}\\)",
        ),
        (
            dict(freeze_encoder_epochs=EPOCHS + 1),
            f"freeze_encoder_epochs \\(4\\) is more than epochs \\({EPOCHS}\\)",
        ),
    ],
)
def test_settings_that_cannot_apply_are_refused_before_any_work(
    small_perovskites, cache_root, tmp_path, settings, message
):
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match=f"^{message}$"):
        finetune(_config(small_perovskites, out, cache_root, **settings))
    assert not out.exists()


def test_scratch_run_may_warm_up(small_perovskites, cache_root, tmp_path):
    _config(
        small_perovskites,
        tmp_path / "s",
        cache_root,
        pretrained=None,
        from_scratch=True,
        freeze_encoder_epochs=0,
    ).validate()


def test_finetune_help_offers_the_knobs_with_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--freeze-encoder-epochs N" in text and "--warmup-epochs N" in text
    assert "linear probe, then fine-tune); N = epochs: a linear probe (default: 0)" in text
    assert "--encoder-anchor ALPHA" in text and "(L2-SP, Li et al. 2018)" in text
    assert "up to lr at the last (then constant, or the cosine decay of --lr-schedule)" in text
    assert "--lr-schedule {constant,cosine}" in text


def _encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _part(state, "encoder.", buffers=False)


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in a))


def test_anchored_encoder_stays_near_its_pretrained_weights(
    small_perovskites, cache_root, tmp_path
):
    """With the anchor the encoder moves, but far less from the pre-trained weights than
    without it; the penalty is the squared distance the module reports."""
    moved = {}
    for anchor in (0.0, 3000.0):
        record = _Record()
        finetune(
            _config(
                small_perovskites,
                tmp_path / f"anchor{anchor:g}",
                cache_root,
                freeze_encoder_epochs=0,
                warmup_epochs=0,
                encoder_anchor=anchor,
            ),
            callbacks=[record],
        )
        start, end = (_encoder_weights(record.states[i]) for i in (0, -1))
        moved[anchor] = _distance(start, end)
    assert 0 < moved[3000.0] < 0.2 * moved[0.0], moved

    from crystaltwins.training.finetune import _loaders, prepare_run

    config = _config(
        small_perovskites,
        tmp_path / "module",
        cache_root,
        freeze_encoder_epochs=0,
        warmup_epochs=0,
        encoder_anchor=2.0,
    )
    run = prepare_run(config)
    module = run.module
    assert float(module.anchor_distance().detach()) == 0.0
    start = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    with torch.no_grad():
        for parameter in module.encoder.parameters():
            parameter.add_(0.01)
    with torch.no_grad():
        weights = dict(module.encoder.named_parameters())
        expected = float(sum(((weights[k] - start[k]) ** 2).sum() for k in weights))
    distance = float(module.anchor_distance().detach())
    assert distance == pytest.approx(expected, rel=1e-6)
    assert "_anchor0" not in module.state_dict()  # not saved: taken from the pre-trained model
    # the penalty (alpha/2 x distance) is in the training loss only; the logged loss is the data's
    module.eval()
    batch = next(iter(_loaders(config, run.parts["train"], run.parts["val"])[0]))
    logged = []
    module.epoch_metrics.add = lambda stage, n, values, weights=None: logged.append(values[0])
    with torch.no_grad():
        train, val = module._step(batch, "train"), module._step(batch, "val")
    assert float(train - val) == pytest.approx(2.0 / 2 * distance, rel=1e-4)  # float32 sums
    assert float(logged[0]) == pytest.approx(float(logged[1]))


def test_anchored_run_refuses_to_resume_from_replaced_weights(
    small_perovskites, cache_root, tmp_path
):
    """A resumed anchored run whose pre-trained file now holds other weights stops in one line
    instead of pulling the encoder elsewhere."""
    from crystaltwins.models.checkpoint import load_model, save_model
    from crystaltwins.models.pretrained import shipped_model_path

    start = tmp_path / "start.pt"
    shutil.copy(shipped_model_path("crystal-twins"), start)
    settings = dict(
        pretrained=str(start), freeze_encoder_epochs=0, warmup_epochs=0, encoder_anchor=1.0
    )
    out = tmp_path / "run"
    config = _config(small_perovskites, out, cache_root, **settings)
    _interrupted(config, 1)
    bundle = load_model(start)
    with torch.no_grad():
        next(bundle.encoder.parameters()).add_(0.1)
    save_model(start, bundle)
    with pytest.raises(ValueError, match="other pre-trained weights than the model file now holds"):
        finetune(config)


def test_anchored_run_resumes_exactly(small_perovskites, cache_root, tmp_path):
    settings = dict(freeze_encoder_epochs=0, warmup_epochs=0, encoder_anchor=50.0)
    expected = tmp_path / "whole"
    finetune(_config(small_perovskites, expected, cache_root, **settings))
    out = tmp_path / "resumed"
    finetune(_interrupted(_config(small_perovskites, out, cache_root, **settings), 2))
    assert _same_tensors(_last(out)["state_dict"], _last(expected)["state_dict"]) == []


def test_a_run_refuses_to_resume_on_edited_data(small_perovskites, cache_root, tmp_path):
    """The data file was edited after the run stopped (one label changed): resuming would
    train and test on a mix of two datasets, so it stops in one line; the file as it was
    resumes."""
    data = tmp_path / "data.csv"
    shutil.copy(small_perovskites, data)
    original = data.read_text()
    settings = dict(pretrained=None, from_scratch=True, freeze_encoder_epochs=0, warmup_epochs=0)
    config = _config(data, tmp_path / "run", cache_root, **settings)
    _interrupted(config, 1)
    saved = _last(tmp_path / "run")
    assert saved["world_size"] == 1 and len(saved["data_sha256"]) == 64
    rows = list(csv.reader(io.StringIO(original)))
    column = rows[0].index("e_form")
    rows[7][column] = str(float(rows[7][column]) + 1.0)
    with open(data, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(ValueError, match="the data changed since this run started"):
        finetune(config)
    data.write_text(original)
    assert finetune(config)["test"]["mae"] > 0


def test_an_early_stopped_run_stays_stopped_when_resumed(small_perovskites, cache_root, tmp_path):
    """The run stopped early, then crashed before writing its model: resumed, it trains no
    further epoch and keeps its best epoch (Lightning restores the patience count, not the
    decision)."""
    settings = dict(
        pretrained=None, from_scratch=True, freeze_encoder_epochs=0, warmup_epochs=0,
        early_stopping=1, epochs=40, lr=0.05,
    )  # fmt: skip
    out = tmp_path / "run"
    config = _config(small_perovskites, out, cache_root, **settings)
    first = finetune(config)
    history = (out / "history.csv").read_text()
    assert len(history.splitlines()) - 1 < 40  # it did stop early
    (out / "model.pt").unlink()
    (out / "metrics.json").unlink()
    config.resume = True
    again = finetune(config)
    assert (out / "history.csv").read_text() == history
    assert again["test"]["mae"] == pytest.approx(first["test"]["mae"])


def test_matbench_folds_need_every_row(small_perovskites, cache_root, tmp_path):
    """One unreadable row would shift matbench's KFold over the rest (another split than the
    leaderboard's): --fold refuses, naming the count; the complete file runs."""
    rows = list(csv.reader(io.StringIO(small_perovskites.read_text())))
    rows[5][rows[0].index("cif")] = "not a CIF"
    data = tmp_path / "one_bad.csv"
    with open(data, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    settings = dict(
        pretrained=None,
        from_scratch=True,
        fold=0,
        epochs=1,
        freeze_encoder_epochs=0,
        warmup_epochs=0,
    )
    with pytest.raises(ValueError, match="all 100 rows in their order, and 1 of them"):
        finetune(_config(data, tmp_path / "bad", cache_root, **settings))
    assert finetune(_config(small_perovskites, tmp_path / "good", cache_root, **settings))


def test_early_stopping_state_of_earlier_checkpoints_is_restored():
    """Checkpoints written with Lightning's EarlyStopping file its state under its key: ours
    uses the same key, so their patience count is restored, not dropped."""
    from lightning.pytorch.callbacks import EarlyStopping

    from crystaltwins.training.finetune import _StaysStopped

    ours = _StaysStopped(monitor="val_mae", patience=3, mode="min")
    assert ours.state_key == EarlyStopping(monitor="val_mae", patience=3, mode="min").state_key


def test_learning_rate_factor_warms_up_then_follows_half_a_cosine():
    from crystaltwins.training.finetune import learning_rate_factor

    def cosine(step: int) -> float:
        return learning_rate_factor(step, warmup_steps=4, total_steps=14, schedule="cosine")

    assert [cosine(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # the warm-up as before
    assert cosine(4) == 1.0 and cosine(9) == pytest.approx(0.5) and cosine(14) == 0.0
    assert cosine(6) == pytest.approx((1 + math.cos(math.pi * 0.2)) / 2)
    assert all(cosine(s) > cosine(s + 1) for s in range(4, 14))  # decays at every step
    assert cosine(20) == 0.0  # past the end (steps a resumed run may add): no rise again
    assert learning_rate_factor(0, warmup_steps=0, total_steps=5, schedule="cosine") == 1.0
    assert learning_rate_factor(9, warmup_steps=0, total_steps=5) == 1.0  # constant


def test_cosine_run_follows_its_schedule_and_resumes_exactly(
    small_perovskites, cache_root, tmp_path
):
    """Through a real run (1 warm-up epoch of 3 steps, then 6 cosine steps), and a run stopped
    at its second epoch and resumed ends with the same weights and scheduler state."""
    settings = dict(freeze_encoder_epochs=0, warmup_epochs=1, lr_schedule="cosine")
    record = _Record()
    whole = tmp_path / "whole"
    finetune(_config(small_perovskites, whole, cache_root, **settings), callbacks=[record])
    per_epoch = record.steps_per_epoch
    total = EPOCHS * per_epoch
    assert per_epoch == 3 and [s for s, _ in record.lrs] == list(range(total))
    for step, (_, lrs) in enumerate(record.lrs):
        if step < per_epoch:
            factor = (step + 1) / per_epoch
        else:
            factor = (1 + math.cos(math.pi * (step - per_epoch) / (total - per_epoch))) / 2
        assert lrs == pytest.approx([LR * FACTOR * factor, LR * factor], rel=1e-12), step
    assert record.lrs[-1][1][1] < 0.1 * LR  # decayed, unlike the constant schedule

    resumed = tmp_path / "resumed"
    finetune(_interrupted(_config(small_perovskites, resumed, cache_root, **settings), 2))
    got, want = _last(resumed), _last(whole)
    assert _same_tensors(got["state_dict"], want["state_dict"]) == []
    assert got["lr_schedulers"] == want["lr_schedulers"]


def test_cosine_run_resumed_over_other_steps_is_refused(small_perovskites, cache_root, tmp_path):
    """Resumed with more epochs (or on other devices), the cosine would restart high (or end
    early): refused in one line, the checkpoint untouched."""
    settings = dict(freeze_encoder_epochs=0, warmup_epochs=0, lr_schedule="cosine")
    out = tmp_path / "run"
    config = _config(small_perovskites, out, cache_root, **settings)
    _interrupted(config, 2)
    before = (out / "checkpoints" / "last.ckpt").read_bytes()
    longer = _config(small_perovskites, out, cache_root, **{**settings, "epochs": EPOCHS + 2})
    longer.resume = True
    with pytest.raises(
        ValueError, match="schedule was laid out over other steps .*total_steps 9 -> 15"
    ):
        finetune(longer)
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before
    assert finetune(config)  # with the epochs it was made with: resumes


def test_a_warmed_up_constant_run_resumes_with_more_epochs(small_perovskites, cache_root, tmp_path):
    """Only a cosine depends on the run's length: a warm-up then a constant rate resumes with
    more epochs (it was refused), its steps after the warm-up at the full rate."""
    settings = dict(freeze_encoder_epochs=0, warmup_epochs=1, lr_schedule="constant")
    out = tmp_path / "run"
    _interrupted(_config(small_perovskites, out, cache_root, **settings), 2)
    longer = _config(small_perovskites, out, cache_root, **{**settings, "epochs": EPOCHS + 2})
    longer.resume = True
    metrics = finetune(longer)
    assert metrics["epochs_run"] == EPOCHS + 2


def test_head_from_a_fine_tuned_start_fits_its_outputs(small_perovskites, cache_root, tmp_path):
    """--head-init source from mp-multi-33k: the hidden layer is the source's, and the new
    output is the least-squares combination of its three outputs (MP formation energy, band
    gap, Fermi energy) that best gives the training targets: better than the mean at epoch 0."""
    import numpy as np

    from crystaltwins.training.finetune import prepare_run

    settings = dict(freeze_encoder_epochs=0, warmup_epochs=0, head_init="source")
    run = prepare_run(
        _config(
            small_perovskites, tmp_path / "r", cache_root, pretrained="mp-multi-33k", **settings
        )
    )
    module, source, train = run.module, run.start.head, run.parts["train"]
    assert torch.equal(module.head[0].weight, source[0].weight)
    module.eval()
    with torch.no_grad():
        batch = train.__getitems__(np.arange(len(train)))
        predicted = module.model(batch)[:, 0].double()
        outputs = source(module.encoder(batch)).double()
    target = module.model.standardise(batch.targets[:, 0].double())
    design = torch.cat([outputs, torch.ones(len(train), 1, dtype=torch.float64)], 1)
    best = torch.linalg.lstsq(design, target.unsqueeze(1)).solution
    residual = float(((design @ best)[:, 0] - target).pow(2).mean())
    assert float((predicted - target).pow(2).mean()) == pytest.approx(residual, rel=1e-4)
    assert residual < 0.9 * float(target.pow(2).mean())  # the source's outputs explain some


def test_head_from_an_encoder_only_start_is_refused(small_perovskites, cache_root, tmp_path):
    settings = dict(freeze_encoder_epochs=0, warmup_epochs=0, head_init="source")
    with pytest.raises(ValueError, match="has no property head"):
        finetune(_config(small_perovskites, tmp_path / "r", cache_root, **settings))
    with pytest.raises(ValueError, match="head_init source needs a fine-tuned starting model"):
        _config(
            small_perovskites, tmp_path / "s", cache_root, pretrained=None, from_scratch=True,
            **settings,
        ).validate()  # fmt: skip
