"""The README's Python quick start runs as written (on a small subset, with fewer epochs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first Python example after ``heading``."""
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def quick_start() -> str:
    return python_block("## Quick start: Python")


def test_python_quick_start_runs(perovskite_subset, data_dir, tmp_path, monkeypatch) -> None:
    code = quick_start()
    for old, new in (
        ('"data/perovskites.csv.gz"', repr(str(perovskite_subset))),
        ('"new_structures/"', repr(str(data_dir / "samples" / "cgcnn_regression"))),
        ("epochs=15", "epochs=1, max_crystals=200, progress=False"),
        ("epochs=200", "epochs=1, max_train=100, max_eval=50, progress=False, plots=False"),
    ):
        assert old in code, f"the README example no longer has {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRYSTALTWINS_CACHE", str(tmp_path / "caches"))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["metrics"]["test"]["mae"] > 0
    assert len(namespace["result"].values) == 10
    assert namespace["vectors"].shape == (2, 128)
    assert (tmp_path / "runs" / "ct" / "model.pt").exists()


@pytest.mark.parametrize("name", ["pretrain", "finetune", "predict", "embed", "load_model"])
def test_quick_start_uses_the_top_level_api(name: str) -> None:
    assert f"ct.{name}(" in quick_start()


def test_extending_example_registers_and_pretrains(perovskite_subset, tmp_path, monkeypatch):
    """The "Extending" example registers its three toys and pre-trains with them (on 60 crystals;
    the registries are restored afterwards)."""
    import torch

    from crystaltwins.losses import OBJECTIVES
    from crystaltwins.models.checkpoint import load_model
    from crystaltwins.models.registry import ENCODERS
    from crystaltwins.transforms import AUGMENTATIONS

    code = python_block("## Extending")
    for old, new in (
        ('"data/perovskites.csv.gz"', repr(str(perovskite_subset))),
        ("max_crystals=500", "max_crystals=60, batch_size=16, progress=False, accelerator='cpu'"),
    ):
        assert old in code, f"the README example no longer has {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRYSTALTWINS_CACHE", str(tmp_path / "caches"))
    saved = [(registry, dict(registry)) for registry in (ENCODERS, OBJECTIVES, AUGMENTATIONS)]
    try:
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)
        assert ENCODERS["mean_element"] is namespace["MeanElementEncoder"]
        assert OBJECTIVES["alignment"] is namespace["AlignmentLoss"]
        assert AUGMENTATIONS["jitter"] is namespace["JitterDistances"]
        payload = torch.load(namespace["model_file"], weights_only=True)
        assert payload["encoder"]["type"] == "mean_element"
        bundle = load_model(namespace["model_file"])
        assert isinstance(bundle.encoder, namespace["MeanElementEncoder"])
        assert bundle.info["objective"] == "alignment"
        assert bundle.info["augmentations"] == "jitter,am"
    finally:
        for registry, before in saved:
            registry.clear()
            registry.update(before)


def test_every_readme_command_line_parses():
    """Each `crystaltwins ...` command of the README's shell examples is accepted by the parser
    (options renamed or removed would fail here); nothing is run."""
    import shlex

    from crystaltwins.cli.main import build_parser

    text = README.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = [line.split(" #", 1)[0] for line in lines if line.startswith("crystaltwins ")]
    assert len(commands) >= 20, commands
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as error:
            if error.code != 0:  # `--help` / `--version` exit 0
                raise AssertionError(f"README command does not parse: {command}") from error
