"""The batch containers, under their data-layer name (they live in :mod:`crystaltwins.graph.batch`,
below the augmentations, which work on :class:`GraphArrays`)."""

from crystaltwins.graph.batch import CrystalGraphBatch, GraphArrays

__all__ = ["CrystalGraphBatch", "GraphArrays"]
