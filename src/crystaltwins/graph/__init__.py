"""Records → crystal graphs: neighbour lists, element features, graph settings."""

from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.crystal_graph import CrystalGraph, build_crystal_graph
from crystaltwins.graph.neighbors import NeighborList, find_neighbors
from crystaltwins.graph.settings import GraphSettings

__all__ = [
    "AtomFeaturizer",
    "CrystalGraph",
    "GraphSettings",
    "NeighborList",
    "build_crystal_graph",
    "find_neighbors",
]
