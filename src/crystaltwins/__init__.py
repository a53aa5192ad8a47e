"""crystaltwins: self-supervised learning on crystal structures (Crystal Twins)."""

__version__ = "0.1.0"
