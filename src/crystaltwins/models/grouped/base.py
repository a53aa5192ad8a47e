"""K property models of one architecture evaluated as one: stacked parameters, batched products.

Several fine-tuning runs (seeds, CT and scratch, ensemble members) can share one process and
the kernels of one step: the K members' parameters are stacked along a leading member axis
(``(K, out, in)`` weights) and each layer is one batched matrix product over the members; every
member sees its own batch, padded to the step's largest atom / edge / crystal counts
(:class:`MemberBatch`). Padded rows never reach a result: the BatchNorm statistics (batch and
running) are masked means over each member's own edges or atoms, padded messages are zeroed
before the neighbour sums, softmaxes leave padded rows out, pooling counts real atoms only and
the losses average over real crystals. Member ``k`` therefore computes exactly what its own
encoder + :class:`~crystaltwins.models.heads.PropertyHead` compute on its batch (up to
rounding; ``tests/training/test_members.py`` compares them in float64).

:class:`StackedModels` holds what every architecture shares (the stacked state, batched linear
layers, masked BatchNorm, the property head); each architecture's module writes its encoder's
forward pass on it (:mod:`.cgcnn` for CGCNN and OGCNN, :mod:`.gin`, :mod:`.gatgnn`).

The formulation is the plain one (gathers, batched products, masked reductions,
``index_add_``): a handful of large kernels per layer whatever K, and no host synchronisation,
which is what an accelerator wants. On the CPU the single-model path has a fused kernel instead;
``benchmarks/bench_members.py`` measures which is faster there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.layers.gaussian import GaussianExpansion


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


def same(values: Sequence[object], what: str) -> None:
    """:raises ValueError: unless every value equals the first (``what`` names them)."""
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"models trained together need the same {what}; got {list(values)}")


def masked_segment_softmax(scores: Tensor, index: Tensor, mask: Tensor, segments: int) -> Tensor:
    """Softmax of ``scores`` ``(R, ...)`` within each group of rows sharing ``index``, rows with
    ``mask`` 0 left out (they get 0 and change no other row), as
    :func:`~crystaltwins.layers.graph_ops.segment_softmax` computes it on the real rows.

    :param index: ``(R,)`` int64 group of every row; :param mask: ``(R,)`` 1 for real rows.
    :param segments: number of groups.
    """
    real = (mask > 0).view(-1, *([1] * (scores.ndim - 1))).expand_as(scores)
    kept = scores.detach().masked_fill(~real, float("-inf"))
    expanded = index.view(-1, *([1] * (scores.ndim - 1))).expand_as(scores)
    maximum = scores.new_full((segments, *scores.shape[1:]), float("-inf")).scatter_reduce(
        0, expanded, kept, reduce="amax", include_self=True
    )
    shifted = torch.where(real, scores - maximum.index_select(0, index), float("-inf"))
    exp = shifted.exp()
    total = exp.new_zeros(segments, *scores.shape[1:]).index_add_(0, index, exp)
    # a real row's group total is at least 1 (its maximum row); padded rows: 0 / tiny = 0
    return exp / total.index_select(0, index).clamp_min(torch.finfo(exp.dtype).tiny)


class StackedModels:
    """K (encoder, property head) pairs of one architecture, with stacked parameters.

    :param encoders: the members' encoders (one class, the same ``config``; element tables may
        differ).
    :param heads: their :class:`~crystaltwins.models.heads.PropertyHead` (same sizes).

    :attr:`params` and :attr:`buffers` map the names of a member's ``encoder.*`` / ``head.*``
    state to ``(K, ...)`` tensors (parameters are leaf tensors that require grad); BatchNorm
    running statistics and ``num_batches_tracked`` are buffers, updated in training mode.
    :meth:`member_state` gives member ``k``'s state dicts back. A subclass writes
    :meth:`embeddings` for its architecture.
    """

    #: the encoder classes a subclass stacks
    encoder_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, encoders: Sequence[nn.Module], heads: Sequence[nn.Module]) -> None:
        if len(encoders) != len(heads) or not encoders:
            raise ValueError("give one head per encoder, at least one member")
        kinds = {type(e) for e in encoders}
        kind = next(iter(kinds))
        if len(kinds) > 1 or not issubclass(kind, self.encoder_types):
            names = sorted({type(e).__name__ for e in encoders})
            wanted = " or ".join(t.__name__ for t in self.encoder_types)
            raise ValueError(
                f"{type(self).__name__} stacks {wanted} encoders of one kind; got {names}"
            )
        same([e.config for e in encoders], "encoder settings")
        same([[tuple(p.shape) for p in h.parameters()] for h in heads], "head sizes")
        bns = [m for e in encoders for m in e.modules() if isinstance(m, nn.BatchNorm1d)]
        same([(m.eps, m.momentum, m.affine, m.track_running_stats) for m in bns], "BatchNorm")
        if not all(m.affine and m.track_running_stats for m in bns):
            raise ValueError("models trained together need affine BatchNorm with running stats")
        self.members = len(encoders)
        self.config = dict(encoders[0].config)
        self.bn_eps = float(bns[0].eps) if bns else 1e-5
        self.bn_momentum = bns[0].momentum if bns else 0.1
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
        # every encoder expands its edge distances with CGCNN's Gaussians
        self.gaussian = GaussianExpansion(**self.config["gaussian"])
        self.training = True

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.tables.device

    @property
    def dtype(self) -> torch.dtype:
        return self.params["head.0.weight"].dtype

    def _move_extra(self, move: Callable[[Tensor], Tensor]) -> None:
        """Move a subclass's own tensors and modules (none here)."""

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StackedModels:
        """Move (and cast floating tensors) in place; returns ``self``."""

        def move(t: Tensor) -> Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            return t.to(device=device, dtype=cast)

        self.params = {n: move(p).detach().requires_grad_(True) for n, p in self.params.items()}
        self.buffers = {n: move(b) for n, b in self.buffers.items()}
        self.tables = move(self.tables)
        self.gaussian = self.gaussian.to(device=device)
        self._move_extra(move)
        return self

    def train(self, mode: bool = True) -> StackedModels:
        self.training = mode
        return self

    def eval(self) -> StackedModels:
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

    # ------------------------------------------------------------------ building blocks
    def _linear(self, x: Tensor, name: str, weight: Tensor | None = None) -> Tensor:
        """``x @ Wᵀ + b`` per member: ``(K, R, in)`` → ``(K, R, out)``."""
        w = self.params[f"{name}.weight"] if weight is None else weight
        return torch.baddbmm(self.params[f"{name}.bias"].unsqueeze(1), x, w.transpose(1, 2))

    def _batch_norm(self, x: Tensor, name: str, mask: Tensor, count: Tensor) -> Tensor:
        """``BatchNorm1d`` over the real rows of every member's ``x`` ``(K, R, C)``; in training
        batch statistics (biased variance) and running statistics updated as torch does.

        :param mask: ``(K, R)`` 1 for real rows; :param count: ``(K, 1)`` real rows."""
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

    def _element_rows(self, table: Tensor, batch: MemberBatch) -> Tensor:
        """Each member's rows of its per-element ``table`` ``(K, n_z, C)`` for its atoms:
        ``(K, N, C)``."""
        k, n = batch.atomic_numbers.shape
        offsets = torch.arange(k, device=self.device).unsqueeze(1) * table.shape[1]
        rows = table.reshape(-1, table.shape[2]).index_select(
            0, (batch.atomic_numbers + offsets).view(-1)
        )
        return rows.view(k, n, table.shape[2])

    @staticmethod
    def _gather(x: Tensor, index: Tensor) -> Tensor:
        """Rows of every member's ``x`` ``(K, N, ...)`` at the flattened ``index`` ``(K * E,)``
        (:attr:`MemberBatch.centre` / ``neighbour`` convention): ``(K, E, ...)``."""
        k = x.shape[0]
        rows = x.reshape(k * x.shape[1], *x.shape[2:]).index_select(0, index)
        return rows.view(k, -1, *x.shape[2:])

    @staticmethod
    def _scatter_sum(values: Tensor, index: Tensor, rows: int) -> Tensor:
        """Every member's ``values`` ``(K, E, ...)`` summed onto the flattened ``index``
        ``(K * E,)``: ``(K, rows, ...)``."""
        k, e = values.shape[:2]
        flat = values.reshape(k * e, *values.shape[2:])
        out = flat.new_zeros(k * rows, *values.shape[2:]).index_add_(0, index, flat)
        return out.view(k, rows, *values.shape[2:])

    def _crystal_sum(self, x: Tensor, batch: MemberBatch) -> Tensor:
        """Sum of each crystal's real atoms' ``x`` ``(K, N, C)``: ``(K, B, C)``."""
        return self._scatter_sum(
            x * batch.atom_mask.unsqueeze(2), batch.crystal, batch.crystal_mask.shape[1]
        )

    # ------------------------------------------------------------------ forward
    def embeddings(self, batch: MemberBatch) -> Tensor:
        """Every member's crystal embeddings ``(K, B, H)`` (padded crystals: values to ignore)."""
        raise NotImplementedError

    def __call__(self, batch: MemberBatch) -> Tensor:
        """Every member's head outputs ``(K, B, out_dim)``."""
        hidden = F.softplus(self._linear(self.embeddings(batch), "head.0"))
        return self._linear(hidden, "head.2")
