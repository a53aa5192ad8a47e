"""Ensembles of fine-tuned models on real perovskites: members share the split, the combined
files agree with the members' own, predict reads the ensemble file, resume finishes members."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from crystaltwins.cli.main import main
from crystaltwins.evaluation.inference import predict, write_predictions_csv
from crystaltwins.evaluation.runs import finetune
from crystaltwins.models.checkpoint import EnsembleBundle, load_model, load_predictor
from crystaltwins.training.common import write_config
from crystaltwins.training.finetune import FinetuneConfig
from crystaltwins.training.run_folder import config_differences
from tests.helpers import cpu_finetune_config

MEMBERS = 2


def _config(source: Path, out: Path, cache_root: Path, **kw) -> FinetuneConfig:
    settings = dict(from_scratch=True, epochs=2, batch_size=32, plots=False, seed=3)
    return cpu_finetune_config(source, out, cache_root, **{**settings, **kw})


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small_perovskites(perovskite_subset, tmp_path_factory) -> Path:
    """The first 160 real perovskites."""
    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("data") / "perovskites_160.csv"
    with gzip.open(perovskite_subset, "rt", newline="") as src, open(path, "w", newline="") as dst:
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), 161))
    return path


@pytest.fixture(scope="module")
def ensemble_run(small_perovskites, cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "run"
    metrics = finetune(_config(small_perovskites, out, cache_root, ensemble=MEMBERS))
    return out, metrics


def test_members_share_the_split_and_differ_in_seed(ensemble_run):
    out, metrics = ensemble_run
    members = [out / "members" / str(k) for k in range(MEMBERS)]
    configs = [(m / "config.yaml").read_text() for m in members]
    assert "seed: 3\n" in configs[0] and "seed: 4\n" in configs[1]
    assert all("split_seed: 3\n" in c for c in configs)
    assert metrics["ensemble"]["seeds"] == [3, 4] and metrics["ensemble"]["split_seed"] == 3
    parts = [np.load(m / "member_predictions.npz") for m in members]
    for name in ("train", "val", "test"):
        assert np.array_equal(parts[0][f"{name}_ids"], parts[1][f"{name}_ids"])
    assert not np.allclose(parts[0]["test_prediction"], parts[1]["test_prediction"])
    assert metrics["crystals"] == {"train": 96, "val": 32, "test": 32, "dropped_invalid_target": 0}


def test_ensemble_metrics_are_those_of_its_predictions_file(ensemble_run):
    out, metrics = ensemble_run
    rows = _rows(out / "test_predictions.csv")
    member_columns = [f"member_{k}" for k in range(MEMBERS)]
    assert list(rows[0]) == ["id", "target", "prediction", "std", *member_columns]
    values = np.array([[float(r[c]) for c in member_columns] for r in rows])
    target = np.array([float(r["target"]) for r in rows])
    mean = np.array([float(r["prediction"]) for r in rows])
    std = np.array([float(r["std"]) for r in rows])
    np.testing.assert_allclose(mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(axis=1), rtol=1e-9)  # ddof 0
    assert metrics["test"]["mae"] == pytest.approx(np.mean(np.abs(mean - target)), rel=1e-12)
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]
    error = np.abs(mean - target)
    ensemble = metrics["ensemble"]
    assert ensemble["within_1_std"] == pytest.approx(np.mean(error <= std))
    assert ensemble["within_2_std"] == pytest.approx(np.mean(error <= 2 * std))
    rho = spearmanr(error, std).statistic
    assert ensemble["spearman_abs_error_std"] == pytest.approx(rho)
    # each member column is that member's own test prediction and test MAE
    for k in range(MEMBERS):
        own = _rows(out / "members" / str(k) / "test_predictions.csv")
        assert [r["id"] for r in own] == [r["id"] for r in rows]
        np.testing.assert_array_equal(values[:, k], [float(r["prediction"]) for r in own])
        own_metrics = json.loads((out / "members" / str(k) / "metrics.json").read_text())
        assert ensemble["member_test_mae"][k] == own_metrics["test"]["mae"]


def test_predict_of_an_ensemble_equals_its_members(ensemble_run, small_perovskites, cache_root):
    out, _ = ensemble_run
    ensemble = load_predictor(out)
    assert isinstance(ensemble, EnsembleBundle) and len(ensemble.members) == MEMBERS
    result = predict(out, small_perovskites, cache_root=cache_root)
    own = [
        predict(out / "members" / str(k), small_perovskites, cache_root=cache_root)
        for k in range(MEMBERS)
    ]
    assert result.members is not None and result.std is not None
    for k, member in enumerate(own):
        np.testing.assert_array_equal(member.ids, result.ids)
        np.testing.assert_allclose(result.members[:, k], member.values, rtol=1e-6)
    np.testing.assert_allclose(result.values, result.members.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(result.std, result.members.std(axis=1), rtol=1e-12)
    # the test crystals' predictions are those of the run's test_predictions.csv
    by_id = dict(zip(result.ids.tolist(), result.values.tolist(), strict=True))
    for row in _rows(out / "test_predictions.csv"):
        assert by_id[row["id"]] == pytest.approx(float(row["prediction"]), rel=1e-5)


def test_ensemble_predict_cli_writes_member_columns_and_rewrites_its_file(
    ensemble_run, small_perovskites, cache_root, tmp_path
):
    out, _ = ensemble_run
    target = tmp_path / "predictions.csv"
    argv = ["predict", str(out), str(small_perovskites), "--out", str(target)]
    argv += ["--cache-root", str(cache_root)]
    assert main(argv) == 0
    first = target.read_text()
    header = first.splitlines()[0]
    members = ",".join(f"member_{k}" for k in range(MEMBERS))
    assert header == f"id,formula,property,prediction,unit,std,{members},true_value"
    assert main(argv) == 0  # an earlier ensemble predictions file may be replaced
    assert target.read_text() == first


def test_a_single_model_run_is_unchanged(ensemble_run, small_perovskites, cache_root, tmp_path):
    """ensemble=1 is today's run, and it is the ensemble's member 0 (same seed, same split)."""
    out, _ = ensemble_run
    single = tmp_path / "single"
    metrics = finetune(_config(small_perovskites, single, cache_root, ensemble=1))
    assert "ensemble" not in metrics
    names = {p.name for p in single.iterdir()}
    assert names == {
        ".crystaltwins.lock",
        "config.yaml",
        "history.csv",
        "checkpoints",
        "tensorboard",
        "metrics.json",
        "model.pt",
        "test_predictions.csv",
    }
    rows = _rows(single / "test_predictions.csv")
    assert list(rows[0]) == ["id", "target", "prediction"]
    member_0 = _rows(out / "members" / "0" / "test_predictions.csv")
    assert rows == member_0
    assert load_model(single).kind == "finetuned"
    result = predict(single, small_perovskites, cache_root=cache_root)
    assert result.std is None and result.members is None
    header = write_predictions_csv(result, tmp_path / "p.csv").read_text().splitlines()[0]
    assert header == "id,formula,property,prediction,unit,true_value"


def test_a_forged_ensemble_file_gives_one_line(ensemble_run, small_perovskites, tmp_path, capsys):
    out, _ = ensemble_run
    payload = torch.load(out / "model.pt", weights_only=True)
    payload["members"][1]["heads"]["property"]["state"]["0.weight"] = torch.zeros(5, 7)
    forged = tmp_path / "forged.pt"
    torch.save(payload, forged)
    target = tmp_path / "p.csv"
    assert main(["predict", str(forged), str(small_perovskites), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "members[1]: heads.property.state['0.weight']" in err
    assert not target.exists()
    # a single model is asked for: the ensemble is named, with the folder of a member
    with pytest.raises(ValueError, match="an ensemble of 2 fine-tuned models.*members/0"):
        load_model(out)
    assert main(["embed", str(out), str(small_perovskites), "--out", str(tmp_path / "e.npz")]) == 2
    assert "ensemble" in capsys.readouterr().err


def test_ensemble_size_is_checked_before_any_work(small_perovskites, cache_root, tmp_path):
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="ensemble must be a whole number >= 1"):
            finetune(_config(small_perovskites, tmp_path / "bad", cache_root, ensemble=bad))
    assert not (tmp_path / "bad").exists()


class _StopInMember(L.Callback):
    """A Ctrl-C in the second epoch of ensemble member ``member``."""

    def __init__(self, member: int) -> None:
        self.member = member

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        in_member = Path(trainer.default_root_dir).name == str(self.member)
        if in_member and trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_resume_finishes_the_remaining_members(
    ensemble_run, small_perovskites, cache_root, tmp_path, capsys
):
    expected, _ = ensemble_run
    out = tmp_path / "resumed"
    config = _config(small_perovskites, out, cache_root, ensemble=MEMBERS)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, callbacks=[_StopInMember(1)])
    assert (out / "members" / "0" / "model.pt").exists()
    assert not (out / "members" / "1" / "model.pt").exists()
    assert not (out / "model.pt").exists()
    capsys.readouterr()
    config.resume = True
    finetune(config)
    said = capsys.readouterr().out
    assert "member 1/2" in said and "finished earlier, kept" in said
    assert "members/1: resuming the run after epoch 1" in said
    got = _rows(out / "test_predictions.csv")
    assert got == _rows(expected / "test_predictions.csv")


def test_a_run_written_before_ensembles_still_resumes(tmp_path):
    """A config.yaml without the new settings is the same run at their defaults, no other."""
    out = tmp_path / "old"
    config = _config(tmp_path / "data.csv", out, tmp_path)
    path = write_config(out, config)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(x for x in lines if not x.startswith(("ensemble:", "split_seed:"))))
    assert "ensemble" not in path.read_text()
    assert config_differences(out, config) == []
    config.ensemble, config.split_seed = 3, 7
    assert config_differences(out, config) == ["ensemble: None -> 3", "split_seed: None -> 7"]


@pytest.mark.parametrize("record", [torch.tensor(3), torch.tensor([[1, 2]]), torch.tensor([2, 1])])
def test_a_malformed_label_record_of_an_ensemble_file_is_one_line(
    ensemble_run, record, tmp_path, capsys
):
    out, _ = ensemble_run
    payload = torch.load(out / "model.pt", weights_only=True)
    payload["info"]["labelled_id_hashes"] = record
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    code = main(["info", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "info.labelled_id_hashes" in err


def test_an_old_scratch_run_folder_resumes_after_the_encoder_factor_default_changed(tmp_path):
    """The factor does nothing from scratch: a folder written when its default was 0.2 still
    matches; a pre-trained run's does not."""
    scratch = _config(tmp_path / "d.csv", tmp_path / "s", tmp_path, from_scratch=True)
    write_config(tmp_path / "s", scratch)
    config = tmp_path / "s" / "config.yaml"
    config.write_text(
        config.read_text().replace("encoder_lr_factor: 1.0", "encoder_lr_factor: 0.2")
    )
    assert "encoder_lr_factor: 0.2" in config.read_text()
    assert config_differences(tmp_path / "s", scratch) == []
    ct = _config(tmp_path / "d.csv", tmp_path / "c", tmp_path, from_scratch=False, pretrained="m")
    write_config(tmp_path / "c", ct)
    config = tmp_path / "c" / "config.yaml"
    config.write_text(
        config.read_text().replace("encoder_lr_factor: 1.0", "encoder_lr_factor: 0.2")
    )
    assert config_differences(tmp_path / "c", ct) == ["encoder_lr_factor: 0.2 -> 1.0"]


def test_a_member_is_finished_for_the_epochs_its_results_were_written_for(tmp_path):
    """A finished 2-epoch ensemble resumed with --epochs 40 and interrupted: each member's
    config.yaml already says 40 (rewritten when its longer run started), its model and
    metrics are still the 2-epoch ones. Run again, that member trains on, not "kept"."""
    import yaml

    from crystaltwins.training.ensemble import MEMBER_PREDICTIONS, _finished, member_config

    config = FinetuneConfig(data="d.csv", target="y", out=str(tmp_path), from_scratch=True)
    member = member_config(config, 0)
    out = Path(member.out)
    out.mkdir(parents=True)
    (out / "model.pt").write_bytes(b"model")
    (out / MEMBER_PREDICTIONS).write_bytes(b"npz")
    longer = member_config(FinetuneConfig(**{**vars(config), "epochs": 40}), 0)
    write_config(out, longer)  # the interrupted longer run's settings
    (out / "metrics.json").write_text(json.dumps({"epochs": 2, "epochs_run": 2}))
    assert not _finished(longer)
    (out / "metrics.json").write_text(json.dumps({"epochs": 40, "epochs_run": 40}))
    assert _finished(longer)
    # metrics written before they recorded their epochs: all epochs run, or early stopping
    (out / "metrics.json").write_text(json.dumps({"epochs_run": 2}))
    assert not _finished(longer)
    (out / "metrics.json").write_text(json.dumps({"epochs_run": 40}))
    assert _finished(longer)
    stopped = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**stopped, "early_stopping": 10}))
    (out / "metrics.json").write_text(json.dumps({"epochs_run": 17}))
    assert _finished(longer)
    (out / "config.yaml").write_bytes(b"\xff\xfe broken")  # one line later, not a traceback here
    assert not _finished(longer)


def test_members_trained_together_are_not_resumed_with_fewer_epochs(tmp_path):
    """Runs trained together keep no checkpoints: their history says how far they went."""
    from crystaltwins.training.run_folder import check_epochs_left

    out = tmp_path / "member"
    out.mkdir()
    (out / "history.csv").write_text("epoch,train_loss\n0,1.0\n1,0.5\n")
    config = FinetuneConfig(data="d.csv", target="y", out=str(out), from_scratch=True, epochs=1)
    with pytest.raises(ValueError, match="has trained 2 epochs, more than the 1 asked for"):
        check_epochs_left(out, config)
    check_epochs_left(out, FinetuneConfig(**{**vars(config), "epochs": 2}))
