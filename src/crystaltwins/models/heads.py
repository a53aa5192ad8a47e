"""Heads on top of the crystal embedding: projector (pre-training), predictor, property head."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """Crystal Twins projector ``Linear → Softplus → Linear``.

    The sub-modules are named ``0``, ``1``, ``2`` so that the published ``fc_head.0.*`` and
    ``fc_head.2.*`` weights load directly.

    :param in_dim: width of the crystal embedding.
    :param hidden_dim: hidden width.
    :param out_dim: width of the projection.

    Input ``(B, in_dim)``, output ``(B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.Softplus(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim = int(in_dim)
        self.hidden_dim = int(hidden_dim)
        self.out_dim = int(out_dim)


class SimSiamPredictor(ProjectionHead):
    """SimSiam predictor as in the Crystal Twins code: ``Linear → Softplus → Linear``, dim → dim.

    In the Crystal Twins SimSiam model the network's ``fc_head`` plays this role (the prediction
    ``p = fc_head(h)`` is compared with the stop-gradient encoder output ``h``); the published
    ``CGCNNSimSiam_model.pth`` ``fc_head`` weights therefore load into this module.

    :param dim: width of the input and output.
    :param hidden_dim: hidden width; defaults to ``dim``.

    Input ``(B, dim)``, output ``(B, dim)``.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__(dim, dim if hidden_dim is None else hidden_dim, dim)


class PropertyHead(nn.Sequential):
    """Fresh fine-tuning head ``Linear → Softplus → Linear`` (Crystal Twins' ``fc_out``).

    :param in_dim: width of the crystal embedding.
    :param hidden_dim: hidden width; defaults to ``in_dim // 2`` as in the Crystal Twins code.
    :param out_dim: number of targets.

    Input ``(B, in_dim)``, output ``(B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 1) -> None:
        hidden = max(1, in_dim // 2) if hidden_dim is None else int(hidden_dim)
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.Softplus(),
            nn.Linear(hidden, out_dim),
        )
        self.in_dim = int(in_dim)
        self.hidden_dim = hidden
        self.out_dim = int(out_dim)
