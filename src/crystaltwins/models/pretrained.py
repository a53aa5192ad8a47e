"""The models shipped with the package, by name (``--pretrained default``, ``mp-eform``,
``mp-multi``, ``mp-multi-33k``).

Each is a model file in ``crystaltwins/resources``; ``docs/model_card.md`` says how it was made and
what it gives. A name is resolved before any path of the same spelling.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: name -> (file in ``crystaltwins/resources``, one line on what it is).
SHIPPED_MODELS: dict[str, tuple[str, str]] = {
    "default": (
        "crystaltwins_pretrained.pt",
        "CGCNN encoder pre-trained with Barlow Twins (Crystal Twins) on 94,279 unlabelled crystals",
    ),
    "mp-eform": (
        "crystaltwins_mp_eform.pt",
        "CGCNN trained on Materials Project formation energies (eV/atom), the benchmark's MP "
        "test crystals held out: the supervised transfer start",
    ),
    "mp-multi": (
        "crystaltwins_mp_multi.pt",
        "CGCNN trained on Materials Project formation energies (eV/atom) with band gaps and Fermi "
        "energies as auxiliary targets, the same crystals held out: the multi-task transfer start",
    ),
    "mp-multi-33k": (
        "crystaltwins_mp_multi_33k.pt",
        "mp-multi's recipe on 33,065 Materials Project crystals, the benchmark's MP test crystals "
        "among them: the best measured start for a property outside those MP tasks",
    ),
}


def shipped_model_path(name: str = "default") -> Path:
    """Path of the shipped model ``name`` (a key of :data:`SHIPPED_MODELS`).

    :raises KeyError: for an unknown name. :raises FileNotFoundError: when this installation
        lacks the file.
    """
    if name not in SHIPPED_MODELS:
        raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    path = Path(str(resources.files("crystaltwins") / "resources" / SHIPPED_MODELS[name][0]))
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: this installation lacks the shipped model {name!r}; pre-train one with "
            "`crystaltwins pretrain` or pass a model file"
        )
    return path


def default_pretrained_path() -> Path:
    """Path of the shipped pre-trained encoder (``--pretrained default``)."""
    return shipped_model_path("default")
