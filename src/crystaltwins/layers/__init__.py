"""Neural-network layers of the CGCNN encoder."""

from crystaltwins.layers.cgcnn_conv import CGConv, EdgeGraph
from crystaltwins.layers.gaussian import GaussianExpansion

__all__ = ["CGConv", "EdgeGraph", "GaussianExpansion"]
