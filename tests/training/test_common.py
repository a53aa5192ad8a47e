"""The trainer every run uses: per-epoch history, best and last checkpoints, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from crystaltwins.training.common import adam, make_trainer, resume_path, training_seconds


class _WorseningModel(L.LightningModule):
    """Trains a linear map; its logged validation loss gets worse every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, _index):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _index):
        self.log("val_loss", float(self.current_epoch + 1), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


def _fit(out: Path, epochs: int, resume: bool = False) -> L.Trainer:
    trainer = make_trainer(
        out, epochs=epochs, monitor="val_loss", accelerator="cpu", devices=1, progress=False
    )
    trainer.fit(
        _WorseningModel(),
        _loader(),
        _loader(),
        ckpt_path=resume_path(out, resume),
        weights_only=True,
    )
    return trainer


def _epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def test_last_checkpoint_every_epoch_even_when_validation_gets_worse(tmp_path: Path) -> None:
    first = training_seconds(_fit(tmp_path, epochs=3))
    assert first > 0
    checkpoints = tmp_path / "checkpoints"
    assert _epoch(checkpoints / "best.ckpt") == 0  # the best validation loss: epoch 0
    assert _epoch(checkpoints / "last.ckpt") == 2  # the latest epoch, not the best one
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [float(r["val_loss"]) for r in rows] == [1.0, 2.0, 3.0]
    # a resumed run continues after the last epoch, not after the best one
    state = torch.load(checkpoints / "last.ckpt", weights_only=True)["callbacks"]["Timer"]
    saved = state["time_elapsed"]["train"]
    assert 0 < saved <= first
    resumed = _fit(tmp_path, epochs=4, resume=True)
    # the training time adds up over the resume (the Timer's state is in the checkpoint)
    assert training_seconds(resumed) > saved
    assert _epoch(checkpoints / "last.ckpt") == 3 and _epoch(checkpoints / "best.ckpt") == 0
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


def test_resume_path_says_what_happens(tmp_path):
    from crystaltwins.training.common import resume_path

    said: list[str] = []
    assert resume_path(tmp_path, True, log=said.append) is None
    assert said == [
        f"{tmp_path}: no checkpoint to resume from ({tmp_path / 'checkpoints' / 'last.ckpt'}); "
        "starting from the first epoch"
    ]
    assert resume_path(tmp_path, False, log=said.append) is None and len(said) == 1
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resume_path(tmp_path, True, log=said.append) == tmp_path / "checkpoints" / "last.ckpt"
    assert resume_path(tmp_path, False, log=said.append) is None
    assert (
        said[-1]
        == f"{tmp_path}: holds an earlier run, which this one replaces (--resume continues it)"
    )


def test_data_parallel_looks_for_unused_parameters_only_when_told():
    """Several GPUs: plain DDP, or DDP that tolerates parameters without a gradient (pre-training
    with atom-level objectives only leaves the projector out); one device or the CPU: Lightning's
    own choice."""
    from lightning.pytorch.strategies import DDPStrategy

    from crystaltwins.training.common import training_strategy

    assert training_strategy("gpu", "auto", True) == "auto"
    assert training_strategy("cpu", "2", True) == "auto"
    assert training_strategy("gpu", "2", False) == "ddp"
    strategy = training_strategy("gpu", "2", True)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs.get("find_unused_parameters") is True


def test_adam_is_fused_on_cpu_and_steps_as_the_foreach_one() -> None:
    """Training's Adam: fused on the CPU, parameter groups (given as generators) kept with their
    own learning rates, and the same update as ``torch.optim.Adam(foreach=True)``."""
    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)
    twin_encoder, twin_head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)
    twin_encoder.load_state_dict(encoder.state_dict())
    twin_head.load_state_dict(head.state_dict())
    ours = adam(
        [{"params": encoder.parameters(), "lr": 2e-4}, {"params": head.parameters()}],
        lr=1e-3,
        weight_decay=1e-4,
    )
    reference = torch.optim.Adam(
        [{"params": twin_encoder.parameters(), "lr": 2e-4}, {"params": twin_head.parameters()}],
        lr=1e-3,
        weight_decay=1e-4,
        foreach=True,
    )
    assert ours.defaults["fused"] and [g["lr"] for g in ours.param_groups] == [2e-4, 1e-3]
    assert [len(g["params"]) for g in ours.param_groups] == [2, 2]
    x, start = torch.randn(32, 8), encoder.weight.detach().clone()
    for _ in range(5):
        for model, optimizer in ((encoder, ours), (twin_encoder, reference)):
            net_head = head if model is encoder else twin_head
            optimizer.zero_grad()
            net_head(torch.tanh(model(x))).square().mean().backward()
            optimizer.step()
    ours_params = [*encoder.parameters(), *head.parameters()]
    reference_params = [*twin_encoder.parameters(), *twin_head.parameters()]
    for a, b in zip(ours_params, reference_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(encoder.weight, start)  # it trained
    meta = torch.nn.Linear(2, 2, device="meta")
    assert adam(meta.parameters(), lr=1e-3).defaults["foreach"]  # no fused kernel there


def test_a_resume_on_another_number_of_devices_is_noted() -> None:
    from types import SimpleNamespace

    from crystaltwins.training.common import execution_change, record_execution

    checkpoint: dict = {}
    record_execution(checkpoint, SimpleNamespace(world_size=4, precision="16-mixed"))
    assert checkpoint["world_size"] == 4 and checkpoint["precision"] == "16-mixed"
    path = "run/checkpoints/last.ckpt"
    same = SimpleNamespace(world_size=4, precision="16-mixed", ckpt_path=path)
    assert execution_change(checkpoint, same) is None
    fewer = SimpleNamespace(world_size=1, precision="16-mixed", ckpt_path=path)
    note = execution_change(checkpoint, fewer)
    assert note is not None and "trained on 4 device(s), resumed on 1" in note
    assert "--devices 4" in note and "\n" not in note and "precision" not in note
    on_cpu = SimpleNamespace(world_size=4, precision="32-true", ckpt_path=path)
    note = execution_change(checkpoint, on_cpu)
    assert note is not None and "precision 16-mixed, resumed at 32-true" in note
    assert execution_change({}, fewer) is None  # older checkpoints: nothing to compare
