"""The README's Python quick start runs as written (on a small subset, with fewer epochs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start: Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


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
