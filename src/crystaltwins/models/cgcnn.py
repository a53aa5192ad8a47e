"""The CGCNN encoder used by Crystal Twins, on :class:`~crystaltwins.graph.batch.CrystalGraphBatch`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.layers import cgcnn_conv
from crystaltwins.layers.cgcnn_conv import CGConv, EdgeGraph
from crystaltwins.layers.gaussian import GaussianExpansion
from crystaltwins.layers.graph_ops import DEFAULT_GAUSSIAN, gaussian_settings
from crystaltwins.models.encoder_base import Encoder
from crystaltwins.models.init_args import check_keys, positive_int, real

#: Largest number of Gaussian centres accepted from a model file.
MAX_GAUSSIANS = 10_000

#: A state-dict key of the ``k``-th convolution (``convs.<k>.``).
CONV_KEY = re.compile(r"^convs\.(\d+)\.")
_CONV_PARTS: dict[str, str] = {  # parameter of a CGConv -> its shape (A atom, K edge features)
    "fc_full.weight": "2A,2A+K",
    "fc_full.bias": "2A",
    "bn1.weight": "2A",
    "bn1.bias": "2A",
    "bn1.running_mean": "2A",
    "bn1.running_var": "2A",
    "bn1.num_batches_tracked": "",
    "bn2.weight": "A",
    "bn2.bias": "A",
    "bn2.running_mean": "A",
    "bn2.running_var": "A",
    "bn2.num_batches_tracked": "",
}


def _as_feature_table(atom_features: Tensor | Any) -> Tensor:
    table = torch.as_tensor(atom_features, dtype=torch.float32).detach().clone()
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 1:
        raise ValueError(
            "atom_features must be a (n_z, n_features) table with row Z the features of element "
            f"Z and row 0 (masked atom) zeros; got shape {tuple(table.shape)}"
        )
    if torch.any(table[0] != 0):
        raise ValueError("row 0 of atom_features (masked atom) must be all zeros")
    return table


class CGCNNEncoder(Encoder):
    """CGCNN up to the crystal embedding (the part shared by pre-training and fine-tuning).

    ``atomic_numbers`` → element features (a fixed table lookup; Z = 0, a masked atom, has all-zero
    features) → ``embedding`` (linear) → ``n_conv`` × :class:`~crystaltwins.layers.CGConv` → mean
    over each crystal's atoms → softplus → ``conv_to_fc`` → softplus.

    The softplus *before* ``conv_to_fc`` is that of the original CGCNN / Crystal Twins code
    (``conv_to_fc(conv_to_fc_softplus(crys_fea))`` then ``conv_to_fc_softplus`` again); it is kept
    so that the published weights compute what they were trained to compute.

    Parameter names match the published checkpoints (``embedding``, ``convs.N.fc_full``,
    ``convs.N.bn1``, ``convs.N.bn2``, ``conv_to_fc``). The element-feature table and the Gaussian
    centres are *non-persistent* buffers: ``state_dict()`` holds only learned parameters and
    BatchNorm statistics, and the model is rebuilt from ``(config, atom_features, state_dict)``
    with :meth:`from_config`; a checkpoint must store the table next to the state dict.

    :param atom_features: ``(n_z, n_features)`` table, row Z the features of element Z
        (92 for CGCNN's ``atom_init.json``), row 0 all zeros.
    :param atom_fea_len: ``A``, width of the atom features in the convolutions.
    :param n_conv: number of convolutions.
    :param h_fea_len: ``H``, width of the crystal embedding.
    :param gaussian: keyword arguments of :class:`~crystaltwins.layers.GaussianExpansion`
        (``dmin``, ``dmax``, ``step``, ``var``); missing keys take CGCNN's defaults.
    """

    atom_features: Tensor
    #: Version of the init args and weight names; a model file of a newer version is refused.
    version = 1

    def __init__(
        self,
        atom_features: Tensor,
        atom_fea_len: int = 64,
        n_conv: int = 3,
        h_fea_len: int = 128,
        gaussian: Mapping[str, float | None] | None = None,
    ) -> None:
        super().__init__()
        table = _as_feature_table(atom_features)
        if n_conv < 0:
            raise ValueError(f"n_conv must be >= 0, got {n_conv}")

        self.config: dict[str, Any] = {
            "atom_fea_len": int(atom_fea_len),
            "n_conv": int(n_conv),
            "h_fea_len": int(h_fea_len),
            "gaussian": gaussian_settings(gaussian),
        }
        self.register_buffer("atom_features", table, persistent=False)
        self.gaussian = GaussianExpansion(**self.config["gaussian"])
        nbr_fea_len = self.gaussian.num_features
        self.embedding = nn.Linear(table.shape[1], atom_fea_len)
        self.convs = nn.ModuleList(CGConv(atom_fea_len, nbr_fea_len) for _ in range(n_conv))
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)

    @classmethod
    def check_init_args(
        cls, config: Any, n_features: int, state: Mapping[str, Any]
    ) -> tuple[dict[str, tuple[int, ...]], int]:
        """The weight shapes and output width that :attr:`config` implies, without building.

        The number of convolutions is checked against the stored ones first, so that nothing
        is sized by the config alone.

        :param config: init args from a model file.
        :param n_features: width of the element-feature table.
        :param state: the stored weights (only their names are read here).
        :returns: ``(name → shape of every weight, H)``.
        :raises ValueError: naming the first bad argument.
        """
        check_keys("init_args", config, {"atom_fea_len", "n_conv", "h_fea_len", "gaussian"})
        check_keys("init_args.gaussian", config["gaussian"], set(DEFAULT_GAUSSIAN))
        a = positive_int("init_args.atom_fea_len", config["atom_fea_len"])
        h = positive_int("init_args.h_fea_len", config["h_fea_len"])
        n_conv = positive_int("init_args.n_conv", config["n_conv"], minimum=0)
        k = gaussian_count(config["gaussian"])
        conv_ids = {int(m.group(1)) for key in state if (m := CONV_KEY.match(str(key)))}
        if n_conv != len(conv_ids):
            raise ValueError(
                f"init_args.n_conv is {n_conv} but the stored weights hold {len(conv_ids)} "
                "convolutions"
            )
        sizes = {"A": a, "2A": 2 * a, "2A+K": 2 * a + k}
        shapes: dict[str, tuple[int, ...]] = {
            "embedding.weight": (a, n_features),
            "embedding.bias": (a,),
            "conv_to_fc.weight": (h, a),
            "conv_to_fc.bias": (h,),
        }
        for n in range(n_conv):
            for part, dims in _CONV_PARTS.items():
                shapes[f"convs.{n}.{part}"] = tuple(sizes[d] for d in dims.split(",") if d)
        return shapes, h

    @property
    def out_dim(self) -> int:
        """Width ``H`` of the crystal embedding."""
        return self.config["h_fea_len"]

    def element_features(self, atomic_numbers: Tensor) -> Tensor:
        """Look up element features.

        :param atomic_numbers: ``(N,)`` int64 Z, 0 for a masked atom.
        :returns: ``(N, n_features)``, all zeros for masked atoms.
        """
        return self.atom_features.index_select(0, atomic_numbers)

    def atom_embeddings(self, batch: CrystalGraphBatch) -> Tensor:
        """Atom features after the last convolution.

        :param batch: the crystal graphs.
        :returns: ``(n_atoms, A)``.
        """
        device_type = batch.atomic_numbers.device.type
        # The fused convolution kernels run in float32: under mixed precision (autocast) the
        # message passing stays in full precision and the heads and loss may use half precision.
        with torch.autocast(device_type=device_type, enabled=False):
            return self._atom_embeddings_fp32(batch)

    def _atom_embeddings_fp32(self, batch: CrystalGraphBatch) -> Tensor:
        # embedding(table[Z]) == embedding(table)[Z]: embed the ~100 table rows, not every atom
        # (in the weights' dtype: float32, or float64 for a model made double)
        table = self.atom_features.to(self.embedding.weight.dtype)
        x = self.embedding(table).index_select(0, batch.atomic_numbers)
        if len(self.convs) == 0:
            return x
        distance = batch.edge_distance.to(x.dtype)
        if cgcnn_conv.plain_path(x):  # accelerators: dense features, CGConv.gated_sum
            edge_fea = self.gaussian(distance)
            for conv in self.convs:
                x = conv(x, edge_fea, batch.edge_index)
            return x
        band = self.gaussian.banded(distance)  # the non-negligible Gaussians of every edge
        edge_fea = torch.zeros(
            distance.shape[0], self.gaussian.num_features, dtype=x.dtype, device=x.device
        ).scatter_(1, *band)
        graph = EdgeGraph(edge_fea, batch.edge_index, x.shape[0], edge_band=band)
        for conv in self.convs:
            x = conv(x, edge_fea, batch.edge_index, graph)
        return x

    @staticmethod
    def pool(atom_fea: Tensor, crystal_index: Tensor, num_crystals: int) -> Tensor:
        """Mean of each crystal's atom features.

        :param atom_fea: ``(n_atoms, F)``.
        :param crystal_index: ``(n_atoms,)`` crystal of every atom.
        :param num_crystals: number of crystals ``B``.
        :returns: ``(B, F)``; a crystal without atoms gets zeros.
        """
        summed = atom_fea.new_zeros(num_crystals, atom_fea.shape[1])
        summed = summed.index_add_(0, crystal_index, atom_fea)
        counts = torch.bincount(crystal_index, minlength=num_crystals).clamp_min_(1)
        return summed / counts.to(atom_fea.dtype).unsqueeze(1)

    def forward(self, batch: CrystalGraphBatch) -> Tensor:
        """Crystal embeddings.

        :param batch: the crystal graphs.
        :returns: ``(num_crystals, H)``.
        """
        crystal = self.pool(self.atom_embeddings(batch), batch.crystal_index, batch.num_crystals)
        return F.softplus(self.conv_to_fc(F.softplus(crystal)))


class CrystalTwinsModel(nn.Module):
    """Encoder + projector, the network pre-trained by Crystal Twins.

    For the Barlow Twins variant the projector is a :class:`~crystaltwins.models.ProjectionHead`;
    for the published SimSiam variant the projector is :class:`torch.nn.Identity` and the
    ``fc_head`` MLP is the objective's predictor (see :class:`~crystaltwins.losses.SimSiamLoss`).

    :param encoder: crystal encoder, ``batch → (B, H)``.
    :param projector: ``(B, H) → (B, D)``; ``None`` for the identity.
    """

    def __init__(self, encoder: CGCNNEncoder, projector: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Identity() if projector is None else projector

    def embed(self, batch: CrystalGraphBatch) -> Tensor:
        """Crystal embeddings ``(B, H)`` (what downstream tasks use)."""
        return self.encoder(batch)

    def forward(self, batch: CrystalGraphBatch) -> Tensor:
        """Projections ``(B, D)``."""
        return self.projector(self.encoder(batch))


def gaussian_count(gaussian: Mapping[str, Any]) -> int:
    """Number of Gaussian centres (``len(np.arange(dmin, dmax + step, step))``), unallocated."""
    dmin = real("init_args.gaussian.dmin", gaussian["dmin"])
    dmax = real("init_args.gaussian.dmax", gaussian["dmax"])
    step = real("init_args.gaussian.step", gaussian["step"])
    if gaussian["var"] is not None and real("init_args.gaussian.var", gaussian["var"]) <= 0:
        raise ValueError(f"init_args.gaussian.var is {gaussian['var']}, expected > 0")
    if step <= 0 or dmax - dmin <= step:
        raise ValueError(
            f"init_args.gaussian has dmin {dmin}, dmax {dmax}, step {step}: "
            "expected 0 < step < dmax - dmin"
        )
    count = math.ceil((dmax + step - dmin) / step)  # how np.arange counts
    if count > MAX_GAUSSIANS:
        raise ValueError(f"init_args.gaussian asks for {count} Gaussians (at most {MAX_GAUSSIANS})")
    return count
