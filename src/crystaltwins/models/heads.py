"""Heads on top of the crystal embedding: projector (pre-training), predictor, property head.

Every head is an :class:`torch.nn.Module` ``(B, in_dim) → (B, out_dim)`` with ``in_dim`` and
``out_dim`` attributes, its init args as :attr:`config` (JSON-able) and :meth:`from_config`, so
that a model file stores ``{type, version, init_args}`` and rebuilds it by name from
:data:`crystaltwins.models.registry.HEADS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn


class _MLPHead(nn.Sequential):
    """``Linear → Softplus → Linear``, sub-modules ``0``, ``1``, ``2`` (the published
    ``fc_head.0.*`` / ``fc_head.2.*`` names)."""

    #: Version of the init args and weight names; a model file of a newer version is refused.
    version = 1

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.Softplus(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim = int(in_dim)
        self.hidden_dim = int(hidden_dim)
        self.out_dim = int(out_dim)

    @property
    def config(self) -> dict[str, Any]:
        """The init args that rebuild this head (see :meth:`from_config`)."""
        return {"in_dim": self.in_dim, "hidden_dim": self.hidden_dim, "out_dim": self.out_dim}

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], state_dict: Mapping[str, Tensor] | None = None
    ) -> nn.Module:
        """The head of :attr:`config`, with ``state_dict`` loaded strictly when given."""
        head = cls(**dict(config))
        if state_dict is not None:
            head.load_state_dict(state_dict, strict=True)
        return head


class ProjectionHead(_MLPHead):
    """Crystal Twins projector ``Linear → Softplus → Linear``.

    :param in_dim: width of the crystal embedding.
    :param hidden_dim: hidden width.
    :param out_dim: width of the projection.

    Input ``(B, in_dim)``, output ``(B, out_dim)``.
    """


class SimSiamPredictor(_MLPHead):
    """SimSiam predictor as in the Crystal Twins code: ``Linear → Softplus → Linear``, dim → dim.

    A head of the pre-trained model (saved in its file), applied to the projections of both
    views by the pre-training module; :class:`~crystaltwins.losses.SimSiamLoss` compares its
    predictions with the stop-gradient projections. In the Crystal Twins SimSiam model the
    network's ``fc_head`` plays this role; the published ``CGCNNSimSiam_model.pth`` ``fc_head``
    weights load into this module.

    :param dim: width of the input and output.
    :param hidden_dim: hidden width; defaults to ``dim``.

    Input ``(B, dim)``, output ``(B, dim)``.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__(dim, dim if hidden_dim is None else hidden_dim, dim)

    @property
    def config(self) -> dict[str, Any]:
        return {"dim": self.in_dim, "hidden_dim": self.hidden_dim}


class PropertyHead(_MLPHead):
    """Fresh fine-tuning head ``Linear → Softplus → Linear`` (Crystal Twins' ``fc_out``).

    :param in_dim: width of the crystal embedding.
    :param hidden_dim: hidden width; defaults to ``in_dim // 2`` as in the Crystal Twins code.
    :param out_dim: number of outputs (targets, or 2 logits for a classifier).

    Input ``(B, in_dim)``, output ``(B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 1) -> None:
        super().__init__(in_dim, max(1, in_dim // 2) if hidden_dim is None else hidden_dim, out_dim)
