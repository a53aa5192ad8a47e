"""The data flow has no import running back up it (scanned with ``ast``, lazy imports included).

Layers, lowest first: io → graph → transforms → data → layers → models → losses → training →
evaluation → api → cli (``demo`` and the package's ``__init__`` / ``__main__`` sit on top). A
module may import its own layer and any layer below it.

The augmentations (``transforms``) work on the plain batch containers of
:mod:`crystaltwins.graph.batch` and never import ``data`` (caches, datasets, loaders); ``data``'s
pair collator applies them to the crystals it gathers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import crystaltwins

PACKAGE = Path(crystaltwins.__file__).parent
LAYERS: list[str | tuple[str, ...]] = [
    "io",
    "graph",
    "transforms",
    "data",
    "layers",
    "models",
    "losses",
    "training",
    "evaluation",
    "api",
    "cli",
    "demo",
]
TOP = {"__init__", "__main__", "demo"}


def _layer(module: str) -> int | None:
    """Rank of ``crystaltwins.<part>...`` (``None`` for modules outside the layers)."""
    parts = module.split(".")
    if parts[0] != "crystaltwins":
        return None
    if len(parts) == 1 or parts[1] in TOP:
        return len(LAYERS)
    for rank, layer in enumerate(LAYERS):
        if parts[1] == layer or (isinstance(layer, tuple) and parts[1] in layer):
            return rank
    return None


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "crystaltwins":  # from crystaltwins import api
                names += [f"crystaltwins.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return [n for n in names if n.startswith("crystaltwins")]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "crystaltwins." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        yield module.removesuffix(".__init__"), path


def test_no_import_runs_back_up_the_data_flow():
    upward = []
    for module, path in _modules():
        own = _layer(module)
        if own is None:
            continue
        for imported in _imports(path):
            rank = _layer(imported)
            if rank is not None and rank > own:
                upward.append(f"{module} imports {imported}")
    assert upward == []


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("training", "crystaltwins.evaluation"), ("transforms", "crystaltwins.data")],
)
def test_named_arrows(layer, forbidden):
    """Training stops at a trained model; augmentations see only the array container."""
    allowed = {"crystaltwins.graph.batch"}
    found = [
        f"{module} imports {imported}"
        for module, path in _modules()
        if module.startswith(f"crystaltwins.{layer}")
        for imported in _imports(path)
        if imported.startswith(forbidden) and imported not in allowed
    ]
    assert found == []


def test_the_scan_sees_lazy_imports(tmp_path):
    """A function-level import counts (the scan cannot pass by not looking)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from crystaltwins.evaluation import report\n")
    assert _imports(source) == ["crystaltwins.evaluation"]
