"""The pre-trained encoder shipped with the package (``finetune --pretrained default``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "crystaltwins_pretrained.pt"


def default_pretrained_path() -> Path:
    """Path of the shipped pre-trained model file; see ``docs/model_card.md``."""
    path = Path(str(resources.files("crystaltwins") / "resources" / DEFAULT_MODEL))
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: this installation ships no default pre-trained encoder yet; "
            "pre-train one with `crystaltwins pretrain` or pass a published Crystal Twins .pth"
        )
    return path
