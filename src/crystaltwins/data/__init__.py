"""Crystal graphs → cached dataset → batches."""

from crystaltwins.data.cache import GraphCache, build_graph_cache
from crystaltwins.data.dataset import CrystalGraphDataset, GraphCollator, collate_graphs
from crystaltwins.data.gather import GraphStore, ragged_rows
from crystaltwins.data.sources import prepare_caches
from crystaltwins.data.splits import Split, cap_split, random_split
from crystaltwins.graph.batch import CrystalGraphBatch, GraphArrays

__all__ = [
    "CrystalGraphBatch",
    "CrystalGraphDataset",
    "GraphArrays",
    "GraphCache",
    "GraphCollator",
    "GraphStore",
    "Split",
    "build_graph_cache",
    "cap_split",
    "collate_graphs",
    "prepare_caches",
    "ragged_rows",
    "random_split",
]
