"""The models shipped with the package, by name (``--pretrained default``, ``crystal-twins``,
``mp-eform``, ``mp-multi``, ``mp-multi-33k``).

Each is a model file in ``crystaltwins/resources``; ``docs/model_card.md`` says how it was made and
what it gives. A name is resolved before any path of the same spelling. ``default`` is another
name for the best start measured (:data:`DEFAULT_MODEL`); runs record the model's own name.
Until 2026-12-02 ``default`` named the Crystal Twins encoder (now ``crystal-twins``): a run
folder whose settings say ``default`` was made from it (:func:`recorded_model_name`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: name -> (file in ``crystaltwins/resources``, one line on what it is).
SHIPPED_MODELS: dict[str, tuple[str, str]] = {
    "crystal-twins": (
        "crystaltwins_pretrained.pt",
        "CGCNN encoder pre-trained with Barlow Twins (Crystal Twins, the paper's method) on "
        "94,279 unlabelled crystals",
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

#: What ``default`` names: the best start measured over perovskites, GVRH and HOIP at 100, 300
#: and 1,000 labels and under the paper's protocol (``docs/results/transfer/README.md``).
DEFAULT_MODEL = "mp-multi-33k"

#: Every name a shipped model answers to: its own, and ``default``.
SHIPPED_NAMES: tuple[str, ...] = ("default", *SHIPPED_MODELS)

#: What ``default`` named in run settings written before it moved to :data:`DEFAULT_MODEL`.
LEGACY_DEFAULT = "crystal-twins"


def canonical_model_name(name: str) -> str:
    """A shipped model's own name (``default`` -> :data:`DEFAULT_MODEL`); any other text as it is."""
    return DEFAULT_MODEL if name == "default" else name


def recorded_model_name(name: str) -> str:
    """The shipped model a run's stored settings meant by ``name``: ``default`` there was
    written before runs recorded a model's own name, when it named :data:`LEGACY_DEFAULT`."""
    return LEGACY_DEFAULT if name == "default" else name


def shipped_model_path(name: str = "default") -> Path:
    """Path of the shipped model ``name`` (``default`` or a key of :data:`SHIPPED_MODELS`).

    :raises KeyError: for an unknown name. :raises FileNotFoundError: when this installation
        lacks the file.
    """
    own = canonical_model_name(name)
    if own not in SHIPPED_MODELS:
        raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED_NAMES)}")
    path = Path(str(resources.files("crystaltwins") / "resources" / SHIPPED_MODELS[own][0]))
    if not path.exists():
        called = repr(name) if own == name else f"{name!r} ({own})"
        raise FileNotFoundError(
            f"{path}: this installation lacks the shipped model {called}; pre-train one with "
            "`crystaltwins pretrain` or pass a model file"
        )
    return path


def default_pretrained_path() -> Path:
    """Path of the model ``--pretrained default`` starts from (:data:`DEFAULT_MODEL`)."""
    return shipped_model_path("default")
