"""Pre-training end to end on real crystals: logs, checkpoints, safe model files, exact resume."""

from __future__ import annotations

import csv

import pytest
import torch

from crystaltwins.models.checkpoint import load_model
from crystaltwins.training.pretrain import PretrainConfig, pretrain


def _config(source, out, cache_root, **kw):
    base = dict(
        data=[str(source)],
        out=str(out),
        max_crystals=256,
        batch_size=32,
        lr=1e-3,
        epochs=2,
        cache_root=str(cache_root),
        progress=False,
        accelerator="cpu",
        devices="1",
    )
    base.update(kw)
    return PretrainConfig(**base)


def _weights(path):
    return load_model(path).encoder.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(perovskite_subset, cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "run"
    return pretrain(_config(perovskite_subset, out, cache_root, epochs=3))


def test_pretraining_writes_logs_checkpoints_and_a_self_describing_model(uninterrupted):
    run = uninterrupted.parent
    assert (run / "config.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists() and (
        run / "checkpoints" / "best.ckpt"
    ).exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((run / "history.csv").open()))
    train = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert len(train) == 3 and len(val) == 3
    assert train[-1] < train[0]  # Barlow Twins loss goes down on real crystals
    payload = torch.load(uninterrupted, weights_only=True)  # no arbitrary unpickling needed
    assert payload["kind"] == "pretrained"
    bundle = load_model(uninterrupted)
    assert bundle.info["objective"] == "barlow_twins" and bundle.info["augmentations"] == "rp,am,em"
    assert bundle.info["crystals"] == {"train": 244, "val": 12}  # seeded 95/5 split of 256
    assert {k: bundle.info[k] for k in ("epochs", "lr", "batch_size", "seed")} == {
        "epochs": 3,
        "lr": 1e-3,
        "batch_size": 32,
        "seed": 0,
    }
    assert bundle.graph_settings.radius == 8.0 and bundle.graph_settings.max_neighbors == 12
    assert bundle.encoder.config["atom_fea_len"] == 64 and bundle.head is not None


def test_resumed_run_equals_uninterrupted_run(
    uninterrupted, perovskite_subset, cache_root, tmp_path
):
    out = tmp_path / "run"
    pretrain(_config(perovskite_subset, out, cache_root, epochs=1))  # "killed" after epoch 1
    resumed = pretrain(_config(perovskite_subset, out, cache_root, epochs=3, resume=True))
    expected, got = _weights(uninterrupted), _weights(resumed)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_simsiam_and_augmentation_choice(perovskite_subset, cache_root, tmp_path):
    model = pretrain(
        _config(
            perovskite_subset,
            tmp_path / "s",
            cache_root,
            objective="simsiam",
            augment="am,em",
            epochs=1,
        )
    )
    info = load_model(model).info
    assert info["objective"] == "simsiam" and info["augmentations"] == "am,em"


def test_pre_training_from_a_fine_tuned_model_gets_a_new_projector(tmp_path):
    """A fine-tuned model's head predicts its property (1 output for mp-eform): continuing
    self-supervised training from it needs a projector of --projection-dim, not that head;
    a pre-trained model's own projector goes on training."""
    from crystaltwins.models.heads import ProjectionHead
    from crystaltwins.training.pretrain import _pretrain_module

    for name, reused in (("mp-eform", False), ("crystal-twins", True)):
        start = load_model(name)
        config = PretrainConfig(
            data=["x.csv"], out=str(tmp_path / name), init_from=name, projection_dim=96
        )
        module = _pretrain_module(config, start, start.featurizer, start.graph_settings, None)
        assert (module.projector is start.head) == reused
        if not reused:
            assert isinstance(module.projector, ProjectionHead)
            assert module.projector.out_dim == 96


def test_excluded_crystals_are_matched_by_resolved_path_and_counted(tmp_path, capsys, monkeypatch):
    import json
    from types import SimpleNamespace

    import numpy as np

    from crystaltwins.training.pretrain import _without_excluded

    data = tmp_path / "d.csv"
    data.write_text("")
    cache = SimpleNamespace(
        manifest={"key": {"source": str(data.resolve())}}, ids=np.array(["a", "b", "c"])
    )
    listed = tmp_path / "excluded.json"
    monkeypatch.chdir(tmp_path)
    listed.write_text(json.dumps([["d.csv", "b"], ["other.csv", "a"]]))  # a relative path
    assert _without_excluded([cache], str(listed)).tolist() == [0, 2]
    assert "excluded 1 of the 2 crystals listed" in capsys.readouterr().out
    listed.write_text(json.dumps([["other.csv", "a"]]))
    assert _without_excluded([cache], str(listed)).tolist() == [0, 1, 2]
    assert "none is in the pre-training data" in capsys.readouterr().out


def test_cache_margin_covers_both_moves(perovskite_subset, tmp_path):
    """RP then GN move an atom up to the sum of their longest moves: the cache's candidate
    margin is that sum (each alone: the larger of it and the default)."""
    from crystaltwins.training.pretrain import _graph_and_features

    def margin(augment: str) -> float:
        config = PretrainConfig(
            data=[str(perovskite_subset)], out=str(tmp_path), augment=augment, noise_sigma=0.1
        )
        return _graph_and_features(config, None)[0].perturbation_margin

    assert margin("rp,gn,am,em") == pytest.approx(0.05 + 0.3)
    assert margin("gn,am,em") == pytest.approx(0.3)
    assert margin("rp,am,em") == pytest.approx(0.05)


def test_resume_refuses_data_whose_crystals_changed(perovskite_subset, cache_root, tmp_path):
    """The same file name holding other crystals: ``finetune`` refused to resume, ``pretrain``
    went on training on the new crystals. Both refuse now, in one line; the same crystals
    resume."""
    import gzip
    import itertools

    def rows(start: int, path):
        with (
            gzip.open(perovskite_subset, "rt", newline="") as src,
            gzip.open(path, "wt", newline="") as dst,
        ):
            reader = csv.reader(src)
            writer = csv.writer(dst)
            writer.writerow(next(reader))
            writer.writerows(itertools.islice(reader, start, start + 60))
        return path

    data = rows(0, tmp_path / "crystals.csv.gz")
    out = tmp_path / "run"
    settings = dict(max_crystals=None, batch_size=16)
    pretrain(_config(data, out, cache_root, epochs=1, **settings))
    rows(300, data)  # other crystals, the same name
    with pytest.raises(ValueError, match="the data changed since this run started"):
        pretrain(_config(data, out, cache_root, epochs=2, resume=True, **settings))
    rows(0, data)
    pretrain(_config(data, out, cache_root, epochs=2, resume=True, **settings))
    assert load_model(out / "model.pt").info["epochs"] == 2
