"""`crystaltwins info MODEL`: what a model file is, from the file (and its run folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crystaltwins.evaluation.info import describe_model


def test_the_shipped_encoder_is_described() -> None:
    info = describe_model("crystal-twins")
    text = "\n".join(info.lines())
    assert info.kind.startswith("pre-trained encoder") and info.objective == "barlow_twins"
    assert "encoder: CGCNN, 3 convolutions, atom features 64, crystal embedding 128" in text
    assert "graphs: 12 nearest neighbours within 8 Å" in text
    assert info.crystals["train"] > 80_000 and "perovskites.csv.gz" in text
    assert not info.target and "test metrics" not in text


def test_the_encoder_line_counts_the_encoder_and_another_line_the_whole_model() -> None:
    """The shipped encoders are the same CGCNN: the same encoder count whatever sits on top."""
    from crystaltwins.models.checkpoint import load_model

    encoder_line = {}
    for name in ("crystal-twins", "mp-multi"):
        info = describe_model(name)
        model = load_model(name)
        encoder = sum(p.numel() for p in model.encoder.parameters())
        assert info.encoder_parameters == encoder < info.parameters
        lines = dict(line.split(": ", 1) for line in info.lines())
        encoder_line[name] = lines["encoder"]
        assert lines["encoder"].endswith(f"{encoder:,} parameters")
        assert lines["parameters"].startswith(f"{info.parameters:,} in all")
    assert encoder_line["crystal-twins"] == encoder_line["mp-multi"]


def test_a_published_checkpoint_is_described(reference_dir: Path) -> None:
    path = reference_dir / "CGCNNBarlow_model.pth"
    if not path.exists():
        pytest.skip(f"no published checkpoint at {path}")
    info = describe_model(path)
    assert info.kind.startswith("published Crystal Twins encoder") and info.parameters > 0
    simsiam = reference_dir / "CGCNNSimSiam_model.pth"
    if simsiam.exists():  # its predictor counts too
        from crystaltwins.models.checkpoint import load_model

        bundle = load_model(simsiam)
        total = sum(p.numel() for m in (bundle.encoder, bundle.predictor) for p in m.parameters())
        described = describe_model(simsiam)
        assert described.parameters == total
        assert f"parameters: {total:,} in all (encoder and predictor)" in described.lines()


def test_a_run_folder_fills_in_what_an_older_model_file_lacks(tmp_path: Path) -> None:
    from crystaltwins.evaluation.info import _run_metrics

    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "metrics.json").write_text(json.dumps({"unit": "eV", "test": {"mae": 0.1}}))
    assert _run_metrics(tmp_path / "model.pt")["unit"] == "eV"
    assert _run_metrics(tmp_path / "other.pt") == {}
    with pytest.raises(ValueError, match="not a crystaltwins model file"):
        describe_model(tmp_path)  # an empty model.pt is refused, not described


def test_malformed_info_entries_are_left_out_not_a_traceback(tmp_path: Path) -> None:
    """Entries the loader does not check (metrics, counts, held-out set, sources) may hold
    anything in an edited file: ``info`` leaves the malformed ones out."""
    from crystaltwins.models.checkpoint import load_model, save_model

    for name, edits in (
        (
            "mp-eform",
            {"test_metrics": [1, 2], "crystals": [1], "held_out": {"what": "x", "crystals": None}},
        ),
        ("mp-eform", {"test_metrics": {"mae": "x", "count": 3}}),
        ("crystal-twins", {"data_sources": 5, "crystals": {"train": "many"}}),
        # inf, NaN and 10**400 were OverflowError / ValueError tracebacks; a list of numbers
        # as augmentations a TypeError
        (
            "mp-eform",
            {
                "test_metrics": {"mae": 10**400, "count": float("inf")},
                "crystals": {"train": float("nan")},
                "held_out": {"what": "x", "crystals": float("inf")},
            },
        ),
        ("crystal-twins", {"augmentations": [1, 2]}),
    ):
        bundle = load_model(name)
        bundle.info.update(edits)
        path = save_model(tmp_path / f"{name}.pt", bundle)
        described = describe_model(path)
        text = "\n".join(described.lines())
        assert text.startswith("model: ") and "mae" not in described.metrics
        if "crystals" in edits:
            assert described.crystals == {}


def test_a_log10_model_names_its_label_column(tmp_path: Path) -> None:
    from crystaltwins.models.checkpoint import load_model, save_model

    bundle = load_model("mp-eform")
    bundle.info.update(
        {"targets": ["log10(G_VRH)"], "target_column": "G_VRH", "target_transform": "log10"}
    )
    described = describe_model(save_model(tmp_path / "gvrh.pt", bundle))
    assert described.target == "G_VRH" and described.target_transform == "log10"


def test_a_renamed_published_simsiam_file_is_still_simsiam(reference_dir: Path, tmp_path) -> None:
    import shutil

    source = reference_dir / "CGCNNSimSiam_model.pth"
    if not source.exists():
        pytest.skip(f"no published checkpoint at {source}")
    shutil.copy(source, tmp_path / "crystal_twins_pretrained.pth")
    shutil.copy(reference_dir / "atom_init.json", tmp_path / "atom_init.json")
    described = describe_model(tmp_path / "crystal_twins_pretrained.pth")
    assert described.objective == "simsiam" and described.heads == ["predictor"]
    assert describe_model(source).objective == "simsiam"
    barlow = describe_model(reference_dir / "CGCNNBarlow_model.pth")
    assert barlow.objective == "barlow_twins"
