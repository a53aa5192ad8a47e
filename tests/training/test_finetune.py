"""Fine-tuning on real data: accuracy against a mean predictor, resume, published weights,
classification, splits from a column."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
import torch

from crystaltwins.evaluation.inference import embed, predict, write_predictions_csv
from crystaltwins.evaluation.runs import finetune
from crystaltwins.models.checkpoint import load_model
from crystaltwins.training.finetune import auxiliary_loss
from tests.helpers import cpu_finetune_config


def _config(source, out, cache_root, **kw):
    settings = dict(from_scratch=True, epochs=12, batch_size=64)
    return cpu_finetune_config(source, out, cache_root, **{**settings, **kw})


@pytest.fixture(scope="module")
def scratch_run(perovskite_subset, cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "scratch"
    return out, finetune(_config(perovskite_subset, out, cache_root))


def test_finetuning_beats_the_mean_predictor_and_writes_the_run(scratch_run):
    out, metrics = scratch_run
    assert metrics["crystals"] == {
        "train": 900,
        "val": 300,
        "test": 300,
        "dropped_invalid_target": 0,
    }
    assert metrics["test"]["mae"] < 0.6 * metrics["mean_predictor_test_mae"]
    for name in (
        "config.yaml",
        "metrics.json",
        "model.pt",
        "test_predictions.csv",
        "parity.png",
        "learning_curves.png",
    ):
        assert (out / name).exists(), name
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    assert len(rows) == 300 and set(rows[0]) == {"id", "target", "prediction"}
    mae = np.mean([abs(float(r["target"]) - float(r["prediction"])) for r in rows])
    assert mae == pytest.approx(metrics["test"]["mae"], rel=1e-5)
    bundle = load_model(out / "model.pt")
    assert bundle.kind == "finetuned" and bundle.info["targets"] == ["e_form"]


def test_resumed_finetuning_equals_uninterrupted(
    scratch_run, perovskite_subset, cache_root, tmp_path
):
    _, expected = scratch_run
    out = tmp_path / "resumed"
    finetune(_config(perovskite_subset, out, cache_root, epochs=5))  # "killed" after 5 epochs
    got = finetune(_config(perovskite_subset, out, cache_root, resume=True))
    assert got["test"]["mae"] == pytest.approx(expected["test"]["mae"], rel=1e-5)
    assert got["val"]["mae"] == pytest.approx(expected["val"]["mae"], rel=1e-5)


def test_published_crystal_twins_checkpoint_finetunes(
    reference_dir, perovskite_subset, cache_root, tmp_path
):
    metrics = finetune(
        _config(
            perovskite_subset,
            tmp_path / "ct",
            cache_root,
            from_scratch=False,
            pretrained=str(reference_dir / "CGCNNBarlow_model.pth"),
            epochs=2,
            max_train=200,
        )
    )
    assert metrics["crystals"]["train"] == 200 and np.isfinite(metrics["test"]["mae"])
    bundle = load_model(tmp_path / "ct" / "model.pt")
    assert bundle.encoder.out_dim == 128  # the published encoder's dimensions
    assert bundle.featurizer.name.startswith("atom_init.json")


def test_a_class_label_other_than_0_or_1_is_left_out_and_listed(data_dir, cache_root, tmp_path):
    """Binary classification: a label of 2 or 0.5 is a bad row (skipped, named, counted), not
    a crash in the loss nor a silent class 0."""
    import shutil

    folder = tmp_path / "cls"
    shutil.copytree(data_dir / "samples" / "cgcnn_classification", folder)
    rows = (folder / "id_prop.csv").read_text().splitlines()
    rows[0], rows[1] = "1000041,2", "1000050,0.5"
    (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    metrics = finetune(
        _config(folder, out, tmp_path / "cache", target="target", task="classification", epochs=1)
    )
    assert metrics["crystals"]["dropped_invalid_target"] == 2
    assert sum(metrics["crystals"][k] for k in ("train", "val", "test")) == 8
    listed = list(csv.reader((out / "invalid_targets.csv").open()))
    assert listed == [
        ["id", "target", "problem"],
        ["1000041", "2.0", "not a class label 0 or 1"],
        ["1000050", "0.5", "not a class label 0 or 1"],
    ]


def test_classification_and_log10_targets(data_dir, cache_root, tmp_path):
    metrics = finetune(
        _config(
            data_dir / "samples" / "cgcnn_classification",
            tmp_path / "cls",
            cache_root,
            target="target",
            task="classification",
            epochs=2,
            batch_size=4,
        )
    )
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # predictions of a classifier: the class and its probability, not a bare "prediction"

    result = predict(
        tmp_path / "cls" / "model.pt",
        data_dir / "samples" / "cgcnn_classification",
        cache_root=cache_root,
    )
    assert result.task == "classification"
    rows = list(csv.DictReader(write_predictions_csv(result, tmp_path / "cls.csv").open()))
    assert list(rows[0]) == [
        "id", "formula", "property", "predicted_class", "probability_class_1", "true_value"
    ]  # fmt: skip
    assert [r["id"] for r in rows] == result.ids.tolist()
    for row in rows:
        probability = float(row["probability_class_1"])
        assert 0.0 <= probability <= 1.0
        assert int(row["predicted_class"]) == int(probability > 0.5)
    metrics = finetune(
        _config(
            data_dir / "mp_elasticity.csv.gz",
            tmp_path / "gvrh",
            cache_root,
            target="G_VRH",
            target_transform="log10",
            unit="GPa",
            epochs=1,
            max_train=200,
            max_eval=100,
        )
    )
    assert metrics["target"] == "log10(G_VRH)"
    # the MAEs are log10(GPa), the values (predictions) GPa: the CLI prints the former
    assert (metrics["metric_unit"], metrics["unit"]) == ("log10(GPa)", "GPa")
    with gzip.open(data_dir / "mp_elasticity.csv.gz", "rt", newline="") as handle:
        raw = {r["id"]: float(r["G_VRH"]) for r in csv.DictReader(handle)}
    rows = list(csv.DictReader((tmp_path / "gvrh" / "test_predictions.csv").open()))
    assert len(rows) == 100
    assert list(rows[0]) == ["id", "target", "prediction", "log10_target", "log10_prediction"]
    for row in rows:  # GPa in target/prediction, the metrics' log10 values beside them
        assert float(row["target"]) == pytest.approx(raw[row["id"]])
        assert float(row["log10_target"]) == pytest.approx(np.log10(raw[row["id"]]))
        assert float(row["prediction"]) == pytest.approx(10 ** float(row["log10_prediction"]))
    mae = np.mean([abs(float(r["log10_target"]) - float(r["log10_prediction"])) for r in rows])
    assert mae == pytest.approx(metrics["test"]["mae"], rel=1e-5)


@pytest.fixture(scope="module")
def elasticity_subset(data_dir, tmp_path_factory):
    """The first 60 crystals of mp_elasticity (id, cif, K_VRH, G_VRH, ...) as a CSV.gz."""
    import itertools

    csv.field_size_limit(2**31 - 1)
    path = tmp_path_factory.mktemp("data") / "mp_elasticity_60.csv.gz"
    with (
        gzip.open(data_dir / "mp_elasticity.csv.gz", "rt", newline="") as src,
        gzip.open(path, "wt", newline="") as dst,
    ):
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), 61))
    return path


def test_log10_run_writes_gpa_as_predict_returns(elasticity_subset, cache_root, tmp_path):
    """test_predictions.csv of a log10 run holds G_VRH in GPa, the values ``predict`` gives."""
    out = tmp_path / "gvrh"
    finetune(
        _config(
            elasticity_subset,
            out,
            cache_root,
            target="G_VRH",
            target_transform="log10",
            epochs=2,
            batch_size=16,
            plots=False,
        )
    )
    with gzip.open(elasticity_subset, "rt", newline="") as handle:
        gpa = {r["id"]: float(r["G_VRH"]) for r in csv.DictReader(handle)}
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    assert len(rows) == 12
    predicted = predict(out / "model.pt", elasticity_subset, cache_root=cache_root)
    by_id = dict(zip(predicted.ids.tolist(), predicted.values.tolist(), strict=True))
    for row in rows:
        assert float(row["target"]) == gpa[row["id"]]
        assert float(row["prediction"]) == pytest.approx(by_id[row["id"]], rel=1e-5)
    # in GPa, not log10(GPa): the predictions are of the size of the moduli
    median_gpa = np.median([float(r["prediction"]) for r in rows])
    assert 0.2 * np.median(list(gpa.values())) < median_gpa < 5 * np.median(list(gpa.values()))


def test_split_from_a_column(perovskite_subset, cache_root, tmp_path):
    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))[:400]
    source = tmp_path / "with_split.csv.gz"
    with gzip.open(source, "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        for k, row in enumerate(rows):
            writer.writerow({**row, "split": ["train", "val", "test", "train"][k % 4]})
    metrics = finetune(
        _config(source, tmp_path / "col", cache_root, split_column="split", epochs=1)
    )
    assert (
        metrics["crystals"]["train"] == 200
        and metrics["crystals"]["val"] == 100
        and metrics["crystals"]["test"] == 100
    )
    json.loads((tmp_path / "col" / "metrics.json").read_text())


def test_split_files_listing_a_crystal_that_cannot_be_used(
    perovskite_subset, cache_root, tmp_path, capsys
):
    """A listed crystal with no label, or unreadable, is left out and counted (it stopped the
    run: "ids not in the data"); a blank split-column value likewise."""
    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))[:200]
    rows[0]["e_form"] = ""  # no label
    rows[1]["cif"] = "not a CIF"  # unreadable
    source = tmp_path / "files.csv.gz"
    with gzip.open(source, "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        for k, row in enumerate(rows):
            writer.writerow({**row, "split": "" if k == 2 else ["train", "val", "test"][k % 3]})
    parts = {name: [r["id"] for k, r in enumerate(rows) if k % 3 == j] for j, name in
             enumerate(("train", "val", "test"))}  # fmt: skip
    files = []
    for name, ids in parts.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(ids) + "\n")
        files.append(str(tmp_path / f"{name}.txt"))
    metrics = finetune(_config(source, tmp_path / "f", cache_root, split_files=files, epochs=1))
    assert metrics["crystals"]["train"] == len(parts["train"]) - 1  # row 0
    assert metrics["crystals"]["val"] == len(parts["val"]) - 1  # row 1
    assert "2 crystals listed in the split files cannot be used" in capsys.readouterr().out
    metrics = finetune(_config(source, tmp_path / "c", cache_root, split_column="split", epochs=1))
    assert metrics["crystals"]["test"] == len(parts["test"]) - 1  # row 2: no split name
    assert "1 crystal with no 'split' value left out of every part" in capsys.readouterr().out


def test_matbench_fold_sets_the_test_crystals(perovskite_subset, cache_root, tmp_path):
    """--fold K tests on fold K of matbench's KFold over the file's crystals."""
    from sklearn.model_selection import KFold

    from crystaltwins.cli.main import main

    out = tmp_path / "fold1"
    code = main(
        ["finetune", str(perovskite_subset), "--target", "e_form", "--out", str(out),
         "--from-scratch", "--fold", "1", "--epochs", "1", "--no-progress",
         "--cache-root", str(cache_root)]
    )  # fmt: skip
    assert code == 0
    with open(out / "test_predictions.csv", newline="") as handle:
        tested = sorted(row["id"] for row in csv.DictReader(handle))
    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    folds = list(KFold(5, shuffle=True, random_state=18012019).split(ids))
    assert tested == sorted(ids[k] for k in folds[1][1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["crystals"]["train"], metrics["crystals"]["val"]) == (900, 300)


def test_a_finetuned_model_is_a_starting_point_for_another_property(
    scratch_run, perovskite_subset, cache_root, tmp_path
):
    """Supervised transfer: the encoder of a model fine-tuned on one property (here e_form) starts
    a run on another (the band gap); frozen throughout (a linear probe), it stays that encoder."""
    source, _ = scratch_run
    out = tmp_path / "gap"
    metrics = finetune(
        _config(
            perovskite_subset,
            out,
            cache_root,
            target="gap_gllbsc",
            from_scratch=False,
            pretrained=str(source / "model.pt"),
            epochs=2,
            freeze_encoder_epochs=2,
            max_train=200,
        )
    )
    assert metrics["init"] == str(source / "model.pt") and np.isfinite(metrics["test"]["mae"])
    before, after = load_model(source / "model.pt"), load_model(out / "model.pt")
    assert after.info["targets"] == ["gap_gllbsc"]
    for name, value in before.encoder.state_dict().items():
        assert np.array_equal(value.numpy(), after.encoder.state_dict()[name].numpy()), name
    heads = before.head.state_dict(), after.head.state_dict()
    assert any(not np.array_equal(heads[0][k].numpy(), heads[1][k].numpy()) for k in heads[0])


def test_starting_from_a_model_trained_on_this_files_labels_warns():
    from crystaltwins.training.finetune import labelled_source_overlap

    info = {"data_source": "/data/mp36k.csv.gz", "target_column": "formation_energy_per_atom"}
    warning = labelled_source_overlap(info, "other/place/mp36k.csv.gz")
    assert warning and "formation_energy_per_atom" in warning and "mp36k.csv.gz" in warning
    assert labelled_source_overlap(info, "perovskites.csv.gz") is None
    assert labelled_source_overlap({}, "mp36k.csv.gz") is None  # a pre-trained (unlabelled) model
    shipped = {**info, "held_out": {"what": "test crystals of bench's MP tasks"}}
    assert "(it held out the test crystals of bench's MP tasks)" in labelled_source_overlap(
        shipped, "mp36k.csv.gz"
    )


def _ids(path, column="id"):
    with open(path, newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def test_the_validation_and_test_crystals_a_starting_model_learned_are_counted(
    perovskite_subset, cache_root, tmp_path
):
    """A fine-tuned model records (hashed) the ids whose labels it used: its capped training
    and validation crystals; a run starting from it on the same file counts, and lists, which
    of its validation and test crystals those are; and its own file keeps the source's record."""
    from crystaltwins.models.provenance import EARLIER_KEY, LABELLED_KEY, id_hashes

    source = tmp_path / "source"
    finetune(_config(perovskite_subset, source, cache_root, epochs=2, max_train=600, max_eval=200))
    record = load_model(source / "model.pt").info[LABELLED_KEY].numpy()
    assert len(record) == 800  # 600 training + 200 validation, not the uncapped 900 + 300
    assert not np.isin(id_hashes(_ids(source / "test_predictions.csv")), record).any()

    def start_from(out, seed):
        config = _config(
            perovskite_subset,
            out,
            cache_root,
            from_scratch=False,
            pretrained=str(source / "model.pt"),
            epochs=1,
            max_train=100,
            seed=seed,
        )
        return finetune(config), list(csv.DictReader((out / "seen_by_starting_model.csv").open()))

    # the source's own split, uncapped: 200 of its 300 validation crystals, none of its test ones
    same, listed = start_from(tmp_path / "same", seed=0)
    assert same["seen_by_starting_model"] == {"val": 200, "test": 0}
    assert {r["part"] for r in listed} == {"val"} and len(listed) == 200

    other, listed = start_from(tmp_path / "other", seed=1)  # another split
    tested = _ids(tmp_path / "other" / "test_predictions.csv")
    expected = sorted(i for i in tested if np.isin(id_hashes([i]), record)[0])
    assert 0 < len(expected) < len(tested)
    assert other["seen_by_starting_model"]["test"] == len(expected)
    assert sorted(r["id"] for r in listed if r["part"] == "test") == expected
    # the second model's file keeps the source's record beside its own
    chained = load_model(tmp_path / "other" / "model.pt").info
    assert np.array_equal(chained[EARLIER_KEY][0][LABELLED_KEY].numpy(), record)


def test_auxiliary_loss_averages_the_known_targets_only():
    outputs = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    targets = torch.tensor([[0.0, float("nan")], [1.0, 1.0]])
    loss = auxiliary_loss(outputs, targets)
    assert loss.item() == pytest.approx((1.0 + 4.0 + 16.0) / 3)
    loss.backward()
    assert outputs.grad[0, 1].item() == 0.0  # a missing label moves nothing
    none_known = auxiliary_loss(outputs, torch.full((2, 2), float("nan")))
    assert none_known.item() == 0.0


def test_auxiliary_targets_are_learned_by_extra_head_outputs(
    perovskite_subset, cache_root, tmp_path
):
    """Multi-task training: the head's second output learns the Fermi level beside e_form; the
    model file records its standardisation; predictions are e_form's alone."""
    out = tmp_path / "aux"
    metrics = finetune(
        _config(perovskite_subset, out, cache_root, aux_targets=["fermi_level"], max_train=600)
    )
    history = list(csv.DictReader((out / "history.csv").open()))
    aux_losses = [float(row["train_aux_loss"]) for row in history]
    assert aux_losses[-1] < 0.7 * aux_losses[0]
    assert metrics["test"]["mae"] < 0.6 * metrics["mean_predictor_test_mae"]
    bundle = load_model(out / "model.pt")
    assert bundle.head.out_dim == 2 and bundle.info["targets"] == ["e_form"]
    (aux,) = bundle.info["aux_targets"]
    assert aux["column"] == "fermi_level" and aux["std"] > 0
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    test_ids = [r["id"] for r in rows]
    with gzip.open(perovskite_subset, "rt", newline="") as handle:
        levels = {r["id"]: float(r["fermi_level"]) for r in csv.DictReader(handle)}
    embedded = embed(bundle, perovskite_subset, cache_root=cache_root)
    position = {i: k for k, i in enumerate(embedded.ids)}
    features = torch.from_numpy(embedded.values[[position[i] for i in test_ids]])
    with torch.no_grad():
        level_predicted = bundle.head.eval()(features)[:, 1].numpy() * aux["std"] + aux["mean"]
    truth = np.array([levels[i] for i in test_ids])
    assert np.abs(level_predicted - truth).mean() < 0.5 * np.abs(truth - aux["mean"]).mean()
    predicted = predict(bundle, perovskite_subset, cache_root=cache_root)
    assert predicted.values.ndim == 1
    by_id = dict(zip(predicted.ids, predicted.values, strict=True))
    for row in rows[:20]:
        assert by_id[row["id"]] == pytest.approx(float(row["prediction"]), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (dict(aux_targets=["e_form"]), "must be distinct and not the target"),
        (dict(aux_targets=["gap_gllbsc"], task="classification"), "need a regression task"),
        (dict(aux_targets=["gap_gllbsc"], aux_weight=-1.0), "aux_weight must be a finite"),
        (dict(aux_targets=["gap_gllbsc"], aux_weight=float("nan")), "aux_weight must be a finite"),
        (dict(aux_targets="gap_gllbsc"), "aux_targets must be a list of column names"),
        (dict(aux_targets=["gap_gllbsc"], members_together=True, ensemble=2), "take no aux"),
        (dict(aux_targets=["gap_gllbsc", "class"]), "cannot include class"),
    ],
)
def test_auxiliary_targets_settings_are_checked(settings, words, tmp_path):
    config = cpu_finetune_config(
        tmp_path / "x.csv", tmp_path / "out", tmp_path, from_scratch=True, **settings
    )
    with pytest.raises(ValueError, match=words):
        config.validate()


def test_an_unknown_auxiliary_column_is_one_line(perovskite_subset, cache_root, tmp_path):
    config = _config(perovskite_subset, tmp_path / "out", cache_root, aux_targets=["nope"])
    with pytest.raises(ValueError, match=r"unknown target column\(s\) 'nope'; available columns"):
        finetune(config)  # from the CSV's header, before any graph is built
