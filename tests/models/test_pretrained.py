"""The pre-trained encoder shipped in the package (``--pretrained default``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crystaltwins.evaluation.inference import embed
from crystaltwins.models import pretrained
from crystaltwins.models.checkpoint import load_model, resolve_model_path

CORPUS = {
    "hoip.csv.gz",
    "mp36k.csv.gz",
    "mp_elasticity.csv.gz",
    "perovskite_synth.csv.gz",
    "perovskites.csv.gz",
    "qmof.csv.gz",
}


def test_default_model_is_small_and_self_describing() -> None:
    path = resolve_model_path("default")
    assert path == pretrained.default_pretrained_path()
    assert path.stat().st_size < 1_000_000  # small enough to keep in git
    bundle = load_model("default")
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


def test_default_model_uses_the_cgcnn_element_encoding(reference_dir: Path) -> None:
    table = load_model("default").featurizer.table
    reference = json.loads((reference_dir / "atom_init.json").read_text())
    for z, features in reference.items():
        np.testing.assert_array_equal(table[int(z)], np.asarray(features, dtype=table.dtype))


def test_default_model_embeds_real_crystals(perovskite_subset: Path, cache_root: Path) -> None:
    result = embed("default", perovskite_subset, cache_root=cache_root)
    values = result.values
    assert values.shape == (len(result.ids), 128)
    assert np.isfinite(values).all()
    # a trained encoder tells crystals apart: embeddings vary across crystals in most dimensions
    assert (values.std(axis=0) > 1e-3).sum() > 64
    # the same crystals embedded again (other batch size) give the same vectors (eval mode)
    again = embed("default", perovskite_subset, batch_size=17, cache_root=cache_root)
    np.testing.assert_allclose(again.values, values, rtol=1e-4, atol=1e-5)


def test_missing_default_model_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pretrained.resources, "files", lambda _package: tmp_path)
    with pytest.raises(FileNotFoundError, match="ships no default pre-trained encoder"):
        load_model("default")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "absent.pt")
