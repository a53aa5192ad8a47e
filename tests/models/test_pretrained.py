"""The models shipped in the package: the Crystal Twins encoder (``crystal-twins``), the
supervised transfer models (``mp-eform``, ``mp-multi``, ``mp-multi-33k``) and ``default``, the
name of the best of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crystaltwins.evaluation.inference import embed
from crystaltwins.evaluation.info import describe_model
from crystaltwins.models import pretrained
from crystaltwins.models.checkpoint import load_model, resolve_model_path
from crystaltwins.models.provenance import LABELLED_KEY

CORPUS = {
    "hoip.csv.gz",
    "mp36k.csv.gz",
    "mp_elasticity.csv.gz",
    "perovskite_synth.csv.gz",
    "perovskites.csv.gz",
    "qmof.csv.gz",
}


def test_default_names_the_best_start_measured() -> None:
    """``default`` is mp-multi-33k (the best start of docs/results/transfer/README.md) by
    another name: the same file, loaded, described and resolved as it."""
    assert pretrained.DEFAULT_MODEL == "mp-multi-33k"
    path = resolve_model_path("default")
    assert path == resolve_model_path("mp-multi-33k") == pretrained.default_pretrained_path()
    assert path != resolve_model_path("crystal-twins")
    bundle = load_model("default")
    assert (
        bundle.kind == "finetuned" and bundle.info["target_column"] == "formation_energy_per_atom"
    )
    assert describe_model("default").lines() == describe_model("mp-multi-33k").lines()
    # a run's settings record the model's own name; "default" stored by a run made before
    # the name moved meant the Crystal Twins encoder
    assert pretrained.canonical_model_name("default") == "mp-multi-33k"
    assert pretrained.canonical_model_name("runs/x/model.pt") == "runs/x/model.pt"
    assert pretrained.recorded_model_name("default") == "crystal-twins"
    assert pretrained.recorded_model_name("mp-multi") == "mp-multi"


def test_crystal_twins_model_is_small_and_self_describing() -> None:
    path = resolve_model_path("crystal-twins")
    assert path.name == "crystaltwins_pretrained.pt"
    assert path.stat().st_size < 1_000_000  # small enough to keep in git
    bundle = load_model("crystal-twins")
    assert bundle.kind == "pretrained"
    assert bundle.encoder.config["atom_fea_len"] == 64
    assert bundle.encoder.config["n_conv"] == 3
    assert bundle.encoder.out_dim == 128
    info = bundle.info
    # the paper's settings on the whole shared corpus (see docs/model_card.md)
    assert info["objective"] == "barlow_twins"
    assert info["augmentations"] == "rp,am,em"
    assert info["epochs"] == 15
    assert info["lr"] == pytest.approx(1e-5)
    assert info["batch_size"] == 64
    assert {Path(s).name for s in info["data_sources"]} == CORPUS
    assert info["crystals"]["train"] + info["crystals"]["val"] == 94_279
    assert bundle.graph_settings.radius == 8.0
    assert bundle.graph_settings.max_neighbors == 12


def test_crystal_twins_model_uses_the_cgcnn_element_encoding(reference_dir: Path) -> None:
    table = load_model("crystal-twins").featurizer.table
    reference = json.loads((reference_dir / "atom_init.json").read_text())
    for z, features in reference.items():
        np.testing.assert_array_equal(table[int(z)], np.asarray(features, dtype=table.dtype))


def test_crystal_twins_model_embeds_real_crystals(
    perovskite_subset: Path, cache_root: Path
) -> None:
    result = embed("crystal-twins", perovskite_subset, cache_root=cache_root)
    values = result.values
    assert values.shape == (len(result.ids), 128)
    assert np.isfinite(values).all()
    # a trained encoder tells crystals apart: embeddings vary across crystals in most dimensions
    assert (values.std(axis=0) > 1e-3).sum() > 64
    # the same crystals embedded again (other batch size) give the same vectors (eval mode)
    again = embed("crystal-twins", perovskite_subset, batch_size=17, cache_root=cache_root)
    np.testing.assert_allclose(again.values, values, rtol=1e-4, atol=1e-5)


def test_missing_default_model_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pretrained.resources, "files", lambda _package: tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"lacks the shipped model 'default' \(mp-multi-33k\)"
    ):
        load_model("default")
    with pytest.raises(FileNotFoundError, match="lacks the shipped model 'crystal-twins';"):
        load_model("crystal-twins")
    with pytest.raises(
        KeyError, match="shipped: default, crystal-twins, mp-eform, mp-multi, mp-multi-33k"
    ):
        pretrained.shipped_model_path("mp-efrom")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "absent.pt")


def test_mp_eform_model_is_a_formation_energy_model_that_never_saw_the_mp_test_crystals() -> None:
    path = resolve_model_path("mp-eform")
    assert path.stat().st_size < 1_000_000
    bundle = load_model("mp-eform")
    assert bundle.kind == "finetuned"
    info = bundle.info
    assert info["target_column"] == "formation_energy_per_atom" and info["unit"] == "eV/atom"
    assert info["data_source"] == "mp36k.csv.gz"  # no path of the machine it was made on
    # held out: the test crystals of bench's three MP tasks, seeds 0-2 (its test set)
    assert info["crystals"]["test"] == info["held_out"]["crystals"] > 20_000
    assert info["test_metrics"]["mae"] < 0.15  # eV/atom, on those held-out crystals
    assert bundle.encoder.config["n_conv"] == 3 and bundle.encoder.out_dim == 128
    lines = "\n".join(describe_model("mp-eform").lines())
    assert "target: formation_energy_per_atom (eV/atom)" in lines
    assert f"held out: {info['held_out']['crystals']:,} crystals, the test crystals of" in lines
    # the crystals whose labels it learned (training + validation), hashed: none held out
    recorded = info[LABELLED_KEY]
    assert len(recorded) == info["crystals"]["train"] + info["crystals"]["val"]
    assert f"labels learned: {len(recorded):,} crystals' ids recorded" in lines


def test_mp_multi_model_learned_three_properties_of_the_same_crystals() -> None:
    """The multi-task source: mp-eform's crystals, splits and held-out set, with the band gap
    and the Fermi energy learned by two more head outputs (recorded, checked, shown)."""
    eform, multi = load_model("mp-eform"), load_model("mp-multi")
    assert resolve_model_path("mp-multi").stat().st_size < 1_000_000
    info = multi.info
    assert info["target_column"] == "formation_energy_per_atom" and info["unit"] == "eV/atom"
    assert [a["column"] for a in info["aux_targets"]] == ["band_gap", "efermi"]
    assert multi.head.out_dim == 3 and eform.head.out_dim == 1
    assert info["data_source"] == "mp36k.csv.gz"
    for key in ("crystals", "what"):
        assert info["held_out"][key] == eform.info["held_out"][key]
    assert "--aux-targets band_gap efermi" in info["held_out"]["recipe"]
    assert info["crystals"] == eform.info["crystals"]
    assert torch.equal(info[LABELLED_KEY], eform.info[LABELLED_KEY])  # the same crystals
    assert info["test_metrics"]["mae"] < 0.15  # eV/atom, on the held-out crystals
    lines = "\n".join(describe_model("mp-multi").lines())
    assert "also learned: band_gap, efermi (auxiliary targets: predict writes them" in lines


def test_mp_multi_33k_model_says_it_held_out_only_its_own_test_split() -> None:
    """mp-multi's recipe on 3x the crystals: the benchmark's MP test crystals were not held out,
    which its file says (info, finetune's warning) and records (the hashed labelled ids)."""
    multi, big = load_model("mp-multi"), load_model("mp-multi-33k")
    assert resolve_model_path("mp-multi-33k").stat().st_size < 1_000_000
    info = big.info
    assert info["data_source"] == "mp36k.csv.gz"
    assert info["target_column"] == multi.info["target_column"]
    assert [a["column"] for a in info["aux_targets"]] == ["band_gap", "efermi"]
    assert info["crystals"]["train"] > 3 * multi.info["crystals"]["train"] - 1_000
    assert info["held_out"]["crystals"] == info["crystals"]["test"] < 2_000
    assert "NOT the test crystals of crystaltwins bench" in info["held_out"]["what"]
    assert "--aux-targets band_gap efermi" in info["held_out"]["recipe"]
    assert len(info[LABELLED_KEY]) == info["crystals"]["train"] + info["crystals"]["val"]
    assert info["test_metrics"]["count"] == 1_836 and info["test_metrics"]["mae"] < 0.1  # eV/atom
    lines = "\n".join(describe_model("mp-multi-33k").lines())
    assert "held out: 1,836 crystals, the training run's own random test split only, NOT" in lines


def test_mp_multi_33k_learned_most_mp36k_labels_mp_multi_under_half(data_dir: Path) -> None:
    """What a run starting from either on mp36k counts as seen, of its first 2,000 crystals:
    95% for the 33k source (its 90/5/5 split), 43% for mp-multi (29% of the whole file: the
    benchmark's test crystals held out)."""
    import csv
    import gzip
    import itertools

    from crystaltwins.models.provenance import seen_ids

    csv.field_size_limit(2**31 - 1)
    with gzip.open(data_dir / "mp36k.csv.gz", "rt", newline="") as handle:
        ids = [row["id"] for row in itertools.islice(csv.DictReader(handle), 2_000)]
    big = seen_ids(load_model("mp-multi-33k").info, ids, "mp36k.csv.gz")
    multi = seen_ids(load_model("mp-multi").info, ids, "mp36k.csv.gz")
    assert big is not None and multi is not None  # both files record the crystals
    assert 0.9 < len(big) / len(ids) < 0.99 and 0.2 < len(multi) / len(ids) < 0.5


def _mp36k_rows(data_dir: Path, folder: Path, rows: int) -> Path:
    """The first ``rows`` crystals of mp36k, as a file of their own."""
    import csv
    import gzip
    import itertools

    csv.field_size_limit(2**31 - 1)
    subset = folder / f"mp36k_{rows}.csv.gz"
    with (
        gzip.open(data_dir / "mp36k.csv.gz", "rt", newline="") as src,
        gzip.open(subset, "wt", newline="") as dst,
    ):
        csv.writer(dst).writerows(itertools.islice(csv.reader(src), rows + 1))
    return subset


def _relative_error(predicted: Any, truth: Any) -> float:
    """MAE of ``predicted`` over that of the mean predictor (NaN labels left out)."""
    truth = np.asarray(truth, dtype=np.float64)
    known = np.isfinite(truth)
    error = np.abs(np.ravel(predicted)[known] - truth[known]).mean()
    return float(error / np.abs(truth[known] - truth[known].mean()).mean())


def test_mp_eform_model_predicts_real_formation_energies(
    data_dir: Path, tmp_path: Path, cache_root: Path
) -> None:
    from crystaltwins.evaluation.inference import predict

    result = predict("mp-eform", _mp36k_rows(data_dir, tmp_path, 300), cache_root=cache_root)
    truth = np.asarray(result.truth, dtype=np.float64)
    error = np.abs(np.ravel(result.values) - truth).mean()
    assert len(truth) == 300 and error < 0.2 and _relative_error(result.values, truth) < 0.2
    assert result.auxiliary == {}  # a single-target model adds no column


def test_mp_multi_model_predicts_the_band_gap_and_fermi_energy_too(
    data_dir: Path, tmp_path: Path, cache_root: Path
) -> None:
    """Its two auxiliary outputs, standardisation undone, are real band gaps and Fermi energies
    (eV) of MP crystals, as columns of the predictions file beside the formation energy."""
    from crystaltwins.evaluation.inference import predict

    out = tmp_path / "predictions.csv"
    result = predict(
        "mp-multi", _mp36k_rows(data_dir, tmp_path, 200), cache_root=cache_root, out=out
    )
    assert _relative_error(result.values, result.truth) < 0.3
    assert list(result.auxiliary) == ["band_gap", "efermi"]
    for column in ("band_gap", "efermi"):
        assert _relative_error(result.auxiliary[column], result.labels[column]) < 0.6, column
    header = out.read_text().splitlines()[0].split(",")
    assert header[5:] == ["predicted_band_gap", "predicted_efermi", "true_value"]
    # an ensemble predicts its members' mean of each (two members: one with its outputs doubled)
    import copy

    from crystaltwins.models.checkpoint import EnsembleBundle

    doubled = copy.deepcopy(load_model("mp-multi"))
    with torch.no_grad():
        last = [m for m in doubled.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(2), last.bias.mul_(2)
    pair = EnsembleBundle([load_model("mp-multi"), doubled])
    mean = predict(pair, _mp36k_rows(data_dir, tmp_path, 200), cache_root=cache_root)
    for column, entry in zip(("band_gap", "efermi"), doubled.info["aux_targets"], strict=True):
        # member 2's standardised output is twice member 1's: the mean is 1.5x it
        standardised = (result.auxiliary[column] - entry["mean"]) / entry["std"]
        expected = 1.5 * standardised * entry["std"] + entry["mean"]
        np.testing.assert_allclose(mean.auxiliary[column], expected, rtol=1e-4, atol=1e-4)
    # an earlier predictions file with those columns may be replaced
    predict("mp-multi", _mp36k_rows(data_dir, tmp_path, 3), cache_root=cache_root, out=out)
    assert len(out.read_text().splitlines()) == 1 + 3
    # members that learned other auxiliary targets are refused, not silently mixed
    mixed = EnsembleBundle([load_model("mp-multi"), load_model("mp-eform")])
    with pytest.raises(ValueError, match=r"member 1 learned other auxiliary targets \(none\)"):
        predict(mixed, _mp36k_rows(data_dir, tmp_path, 3), cache_root=cache_root)
