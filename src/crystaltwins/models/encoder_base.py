"""What every encoder shares: rebuilding from its init args, and its element-feature table."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Self

from torch import Tensor, nn


class Encoder(nn.Module):
    """Base of the registered encoders (:mod:`crystaltwins.models.registry`).

    A subclass is built as ``cls(atom_features, **config)``, keeps its init args in
    :attr:`config` and its ``(n_z, n_features)`` element table in the buffer ``atom_features``.
    """

    atom_features: Tensor
    config: dict[str, Any]

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        atom_features: Tensor,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> Self:
        """Rebuild an encoder from its :attr:`config`, the element table and (optionally)
        weights, loaded strictly."""
        encoder = cls(atom_features, **copy.deepcopy(dict(config)))
        if state_dict is not None:
            encoder.load_state_dict(state_dict, strict=True)
        return encoder

    @property
    def num_features(self) -> int:
        """Width of the element features (92 for CGCNN's ``atom_init.json``)."""
        return int(self.atom_features.shape[1])
