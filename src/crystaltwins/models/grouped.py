"""K CGCNN (or OGCNN) property models evaluated as one: stacked parameters, batched products.

Several fine-tuning runs (seeds, CT and scratch, ensemble members) can share one process and
the kernels of one step: the K members' parameters are stacked along a leading member axis
(``(K, out, in)`` weights) and each layer is one batched matrix product over the members; every
member sees its own batch, padded to the step's largest atom / edge / crystal counts
(:class:`MemberBatch`). Padded rows never reach a result: the BatchNorm statistics (batch and
running) are masked means over each member's own edges or atoms, padded messages are zeroed
before the neighbour sums, pooling counts real atoms only and the losses average over real
crystals. Member ``k`` therefore computes exactly what its own
:class:`~crystaltwins.models.cgcnn.CGCNNEncoder` (or
:class:`~crystaltwins.models.ogcnn.OGCNNEncoder`: the same convolutions on element + orbital-field
matrix inputs, padded edges left out of the field) + :class:`~crystaltwins.models.heads.PropertyHead`
compute on its batch (up to rounding; tests compare them in float64).

The formulation is the plain one (gathers, batched products, masked reductions, one
``index_add_``): a handful of large kernels per layer whatever K, and no host synchronisation,
which is what an accelerator wants. On the CPU the single-model path has a fused kernel instead;
``benchmarks/bench_members.py`` measures which is faster there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.layers.gaussian import GaussianExpansion
from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.ogcnn import OFM_DISTANCE_POWER, OGCNNEncoder

#: Encoders whose members can be stacked (the same convolutions; OGCNN adds its OFM input).
GROUPED_ENCODERS = (CGCNNEncoder, OGCNNEncoder)


@dataclass
class MemberBatch:
    """One batch per member, padded to common sizes and stacked (``K`` members).

    :param atomic_numbers: ``(K, N)`` int64 Z; padded atoms 0.
    :param atom_mask: ``(K, N)`` float, 1 for real atoms.
    :param centre: ``(K * E,)`` int64 centre atom of every edge, as a row of the flattened
        ``(K * N, ·)`` atom arrays (padded edges point at their member's atom 0).
    :param neighbour: ``(K * E,)`` int64 neighbour atom, same convention.
    :param edge_distance: ``(K, E)`` distances, Å (padded edges 0).
    :param edge_mask: ``(K, E)`` float, 1 for real edges.
    :param crystal: ``(K * N,)`` int64 crystal of every atom, as a row of the flattened
        ``(K * B, ·)`` crystal arrays (padded atoms: their member's crystal 0, masked out).
    :param crystal_atoms: ``(K, B)`` float atoms per crystal (1 for padded crystals).
    :param crystal_mask: ``(K, B)`` float, 1 for real crystals.
    :param targets: ``(K, B)`` float targets (padded crystals 0), or ``None``.
    :param edge_counts: ``(K, 1)`` float real edges per member.
    :param atom_counts: ``(K, 1)`` float real atoms per member.
    :param crystal_counts: ``(K,)`` float real crystals per member.
    """

    atomic_numbers: Tensor
    atom_mask: Tensor
    centre: Tensor
    neighbour: Tensor
    edge_distance: Tensor
    edge_mask: Tensor
    crystal: Tensor
    crystal_atoms: Tensor
    crystal_mask: Tensor
    targets: Tensor | None
    edge_counts: Tensor
    atom_counts: Tensor
    crystal_counts: Tensor

    @property
    def members(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @classmethod
    def stack(cls, batches: Sequence[CrystalGraphBatch], dtype: torch.dtype) -> MemberBatch:
        """Pad and stack one :class:`CrystalGraphBatch` per member (on their device; sizes come
        from tensor shapes, so nothing is read back from a device).

        :param dtype: floating dtype of distances, masks and targets.
        """
        k = len(batches)
        device = batches[0].atomic_numbers.device
        n = max(max(b.num_atoms for b in batches), 1)
        e = max(max(b.num_edges for b in batches), 1)
        c = max(max(b.num_crystals for b in batches), 1)
        z = torch.zeros(k, n, dtype=torch.long, device=device)
        atom_mask = torch.zeros(k, n, dtype=dtype, device=device)
        centre = torch.zeros(k, e, dtype=torch.long, device=device)
        neighbour = torch.zeros(k, e, dtype=torch.long, device=device)
        distance = torch.zeros(k, e, dtype=dtype, device=device)
        edge_mask = torch.zeros(k, e, dtype=dtype, device=device)
        crystal = torch.zeros(k, n, dtype=torch.long, device=device)
        crystal_atoms = torch.ones(k, c, dtype=dtype, device=device)
        crystal_mask = torch.zeros(k, c, dtype=dtype, device=device)
        with_targets = all(b.targets is not None for b in batches)
        targets = torch.zeros(k, c, dtype=dtype, device=device) if with_targets else None
        for m, b in enumerate(batches):
            na, ne, nc = b.num_atoms, b.num_edges, b.num_crystals
            z[m, :na] = b.atomic_numbers
            atom_mask[m, :na] = 1
            centre[m, :ne] = b.edge_index[0]
            neighbour[m, :ne] = b.edge_index[1]
            distance[m, :ne] = b.edge_distance
            edge_mask[m, :ne] = 1
            crystal[m, :na] = b.crystal_index
            crystal_atoms[m, :nc] = torch.bincount(b.crystal_index, minlength=nc).clamp_min(1)
            crystal_mask[m, :nc] = 1
            if targets is not None:
                targets[m, :nc] = b.targets[:, 0]
        member = torch.arange(k, device=device).unsqueeze(1)
        return cls(
            atomic_numbers=z,
            atom_mask=atom_mask,
            centre=(centre + member * n).view(-1),
            neighbour=(neighbour + member * n).view(-1),
            edge_distance=distance,
            edge_mask=edge_mask,
            crystal=(crystal + member * c).view(-1),
            crystal_atoms=crystal_atoms,
            crystal_mask=crystal_mask,
            targets=targets,
            edge_counts=edge_mask.sum(1, keepdim=True),
            atom_counts=atom_mask.sum(1, keepdim=True),
            crystal_counts=crystal_mask.sum(1),
        )


def _same(values: Sequence[object], what: str) -> None:
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"models trained together need the same {what}; got {list(values)}")


class GroupedPropertyModels:
    """K (encoder, property head) pairs of one architecture, with stacked parameters.

    :param encoders: the members' :class:`CGCNNEncoder` or :class:`OGCNNEncoder` (one class,
        the same ``config``; element tables may differ).
    :param heads: their :class:`~crystaltwins.models.heads.PropertyHead` (same sizes).

    :attr:`params` and :attr:`buffers` map the names of a member's ``encoder.*`` / ``head.*``
    state to ``(K, ...)`` tensors (parameters are leaf tensors that require grad); BatchNorm
    running statistics and ``num_batches_tracked`` are buffers, updated in training mode.
    :meth:`member_state` gives member ``k``'s state dicts back.
    """

    def __init__(
        self, encoders: Sequence[CGCNNEncoder | OGCNNEncoder], heads: Sequence[nn.Module]
    ) -> None:
        if len(encoders) != len(heads) or not encoders:
            raise ValueError("give one head per encoder, at least one member")
        kinds = {type(e) for e in encoders}
        if len(kinds) > 1 or not issubclass(kinds.pop(), GROUPED_ENCODERS):
            names = sorted({type(e).__name__ for e in encoders})
            raise ValueError(f"only CGCNN or OGCNN encoders of one kind stack; got {names}")
        _same([e.config for e in encoders], "encoder settings")
        _same([[tuple(p.shape) for p in h.parameters()] for h in heads], "head sizes")
        first = encoders[0]
        bns = [m for e in encoders for m in e.modules() if isinstance(m, nn.BatchNorm1d)]
        _same([(m.eps, m.momentum, m.affine, m.track_running_stats) for m in bns], "BatchNorm")
        if not all(m.affine and m.track_running_stats for m in bns):
            raise ValueError("models trained together need affine BatchNorm with running stats")
        self.members = len(encoders)
        self.n_conv = first.config["n_conv"]
        self.atom_fea_len = first.config["atom_fea_len"]
        self.bn_eps = float(bns[0].eps) if bns else 1e-5
        self.bn_momentum = bns[0].momentum if bns else 0.1
        self.gaussian = GaussianExpansion(**first.config["gaussian"])
        heads = list(heads)
        names = [n for n, _ in heads[0].named_parameters()]
        if names != ["0.weight", "0.bias", "2.weight", "2.bias"]:
            raise ValueError(f"a property head is Linear → Softplus → Linear; got {names}")
        self.params: dict[str, Tensor] = {}
        self.buffers: dict[str, Tensor] = {}
        for prefix, modules in (("encoder.", encoders), ("head.", heads)):
            states = [m.state_dict(keep_vars=True) for m in modules]
            trainable = {n for n, p in modules[0].named_parameters()}
            for name in states[0]:
                stacked = torch.stack([s[name].detach() for s in states]).clone()
                if name in trainable:
                    self.params[prefix + name] = stacked.requires_grad_(True)
                else:
                    self.buffers[prefix + name] = stacked
        self.tables = torch.stack([e.atom_features for e in encoders])  # (K, n_z, F)
        self.ofm = isinstance(first, OGCNNEncoder)
        # (n_z, 32) valence one-hot rows of the OFM, the same for every member
        self.valence = first.valence if self.ofm else None
        self.training = True

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.tables.device

    @property
    def dtype(self) -> torch.dtype:
        return self.params["encoder.conv_to_fc.weight"].dtype

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GroupedPropertyModels:
        """Move (and cast floating tensors) in place; returns ``self``."""

        def move(t: Tensor) -> Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            return t.to(device=device, dtype=cast)

        self.params = {n: move(p).detach().requires_grad_(True) for n, p in self.params.items()}
        self.buffers = {n: move(b) for n, b in self.buffers.items()}
        self.tables = move(self.tables)
        if self.valence is not None:
            self.valence = move(self.valence)
        self.gaussian = self.gaussian.to(device=device)
        return self

    def train(self, mode: bool = True) -> GroupedPropertyModels:
        self.training = mode
        return self

    def eval(self) -> GroupedPropertyModels:
        return self.train(False)

    def state(self) -> dict[str, Tensor]:
        """Every stacked tensor (parameters and buffers), detached."""
        return {n: t.detach() for n, t in {**self.params, **self.buffers}.items()}

    def member_state(
        self, k: int, state: dict[str, Tensor] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Member ``k``'s ``(encoder_state_dict, head_state_dict)`` (copies), from
        :meth:`state` or ``state`` (a saved copy of it)."""
        state = self.state() if state is None else state
        encoder = {n[8:]: t[k].clone() for n, t in state.items() if n.startswith("encoder.")}
        head = {n[5:]: t[k].clone() for n, t in state.items() if n.startswith("head.")}
        return encoder, head

    # ------------------------------------------------------------------ forward
    def _linear(self, x: Tensor, name: str, weight: Tensor | None = None) -> Tensor:
        """``x @ Wᵀ + b`` per member: ``(K, R, in)`` → ``(K, R, out)``."""
        w = self.params[f"{name}.weight"] if weight is None else weight
        return torch.baddbmm(self.params[f"{name}.bias"].unsqueeze(1), x, w.transpose(1, 2))

    def _batch_norm(self, x: Tensor, name: str, mask: Tensor, count: Tensor) -> Tensor:
        """``BatchNorm1d`` over the real rows of every member's ``x`` ``(K, R, C)``; in training
        batch statistics (biased variance) and running statistics updated as torch does."""
        gamma = self.params[f"{name}.weight"].unsqueeze(1)
        beta = self.params[f"{name}.bias"].unsqueeze(1)
        if not self.training:
            mean = self.buffers[f"{name}.running_mean"].unsqueeze(1)
            var = self.buffers[f"{name}.running_var"].unsqueeze(1)
            return (x - mean) * torch.rsqrt(var + self.bn_eps) * gamma + beta
        m = mask.unsqueeze(2)
        c = count.unsqueeze(2)  # (K, 1, 1)
        mean = (x * m).sum(1, keepdim=True) / c
        centred = x - mean
        var = (centred.square() * m).sum(1, keepdim=True) / c
        with torch.no_grad():
            tracked = self.buffers[f"{name}.num_batches_tracked"]
            tracked.add_(1)
            if self.bn_momentum is None:  # cumulative average, as BatchNorm1d(momentum=None)
                momentum = (1.0 / tracked.to(x.dtype)).unsqueeze(1)
            else:
                momentum = torch.full_like(count, float(self.bn_momentum))
            unbiased = var[:, 0] * (count / (count - 1).clamp_min(1))
            for stat, value in (("running_mean", mean[:, 0]), ("running_var", unbiased)):
                buf = self.buffers[f"{name}.{stat}"]
                buf.mul_(1 - momentum).add_(momentum * value.to(buf.dtype))
        return centred * torch.rsqrt(var + self.bn_eps) * gamma + beta

    def _conv(self, x: Tensor, edge_fea: Tensor, batch: MemberBatch, i: int) -> Tensor:
        """One CGCNN convolution of every member, ``(K, N, A)`` → ``(K, N, A)``."""
        k, n, a = x.shape
        name = f"encoder.convs.{i}"
        weight = self.params[f"{name}.fc_full.weight"]  # (K, 2A, 2A + G)
        h_i = self._linear(x, f"{name}.fc_full", weight[:, :, :a])  # bias once, with the centre
        h_j = torch.bmm(x, weight[:, :, a : 2 * a].transpose(1, 2))
        e = edge_fea.shape[1]
        z = torch.bmm(edge_fea, weight[:, :, 2 * a :].transpose(1, 2))  # (K, E, 2A)
        z = z + h_i.reshape(k * n, 2 * a).index_select(0, batch.centre).view(k, e, 2 * a)
        z = z + h_j.reshape(k * n, 2 * a).index_select(0, batch.neighbour).view(k, e, 2 * a)
        z = self._batch_norm(z, f"{name}.bn1", batch.edge_mask, batch.edge_counts)
        nbr_filter, nbr_core = z.chunk(2, dim=2)
        message = torch.sigmoid(nbr_filter) * F.softplus(nbr_core) * batch.edge_mask.unsqueeze(2)
        summed = x.new_zeros(k * n, a).index_add_(0, batch.centre, message.reshape(k * e, a))
        summed = self._batch_norm(
            summed.view(k, n, a), f"{name}.bn2", batch.atom_mask, batch.atom_counts
        )
        return F.softplus(x + summed)

    def _element_rows(self, table: Tensor, batch: MemberBatch) -> Tensor:
        """Each member's rows of its per-element ``table`` ``(K, n_z, C)`` for its atoms:
        ``(K, N, C)``."""
        k, n = batch.atomic_numbers.shape
        offsets = torch.arange(k, device=self.device).unsqueeze(1) * table.shape[1]
        rows = table.reshape(-1, table.shape[2]).index_select(
            0, (batch.atomic_numbers + offsets).view(-1)
        )
        return rows.view(k, n, table.shape[2])

    def _ofm_inputs(self, batch: MemberBatch) -> Tensor:
        """OGCNN's atom inputs ``(K, N, A)``: ``embedding2(softplus(embedding1([element ‖
        OFM])))``, the OFM (:func:`~crystaltwins.models.ogcnn.orbital_field_matrix`) summed over
        each member's real edges only."""
        k, n = batch.atomic_numbers.shape
        w = self.params["encoder.embedding1.weight"]  # (K, hot, F + 1056)
        n_elem = self.tables.shape[2]
        element = torch.baddbmm(
            self.params["encoder.embedding1.bias"].unsqueeze(1),
            self.tables.to(self.dtype),
            w[:, :, :n_elem].transpose(1, 2),
        )  # (K, n_z, hot)
        orbitals = self.valence.to(self.dtype).index_select(0, batch.atomic_numbers.view(-1))
        mask = batch.edge_mask.view(-1, 1)
        distance = torch.where(mask > 0, batch.edge_distance.view(-1, 1).to(self.dtype), 1.0)
        weight = distance.pow(-OFM_DISTANCE_POWER) * mask  # padded edges weigh nothing
        field = torch.zeros_like(orbitals).index_add_(
            0, batch.centre, orbitals.index_select(0, batch.neighbour) * weight
        )
        right = torch.cat((torch.ones_like(field[:, :1]), field), dim=1)  # (K N, 33)
        ofm = (orbitals.unsqueeze(2) * right.unsqueeze(1)).reshape(k, n, -1)  # (K, N, 1056)
        hidden = torch.baddbmm(
            self._element_rows(element, batch), ofm, w[:, :, n_elem:].transpose(1, 2)
        )
        return self._linear(F.softplus(hidden), "encoder.embedding2")

    def embeddings(self, batch: MemberBatch) -> Tensor:
        """Every member's crystal embeddings ``(K, B, H)`` (padded crystals: values to ignore)."""
        k, n = batch.atomic_numbers.shape
        if self.ofm:
            x = self._ofm_inputs(batch)
        else:
            tables = self._linear(self.tables.to(self.dtype), "encoder.embedding")  # (K, n_z, A)
            x = self._element_rows(tables, batch)
        a = x.shape[2]
        if self.n_conv:
            edge_fea = self.gaussian(batch.edge_distance.to(self.dtype))  # (K, E, G)
            for i in range(self.n_conv):
                x = self._conv(x, edge_fea, batch, i)
        c = batch.crystal_mask.shape[1]
        pooled = x.new_zeros(k * c, a).index_add_(
            0, batch.crystal, (x * batch.atom_mask.unsqueeze(2)).view(k * n, a)
        )
        pooled = pooled.view(k, c, a) / batch.crystal_atoms.unsqueeze(2)
        return F.softplus(self._linear(F.softplus(pooled), "encoder.conv_to_fc"))

    def __call__(self, batch: MemberBatch) -> Tensor:
        """Every member's head outputs ``(K, B, out_dim)``."""
        hidden = F.softplus(self._linear(self.embeddings(batch), "head.0"))
        return self._linear(hidden, "head.2")
