"""CGCNN's gated graph convolution on an edge list.

The convolution computes exactly CGCNN's function (``fc_full`` on ``v_i ⊕ v_j ⊕ u_ij``,
BatchNorm over edges, sigmoid gate × softplus core summed over each centre's edges, BatchNorm
over atoms, residual softplus) without materialising the ``(E, 2A + K)`` concatenation, and
with few and small per-edge temporaries:

* ``fc_full`` is applied split, ``W = [W_i | W_j | W_u]``: ``W_i v`` and ``W_j v`` once per
  atom, gathered to the edges, plus ``W_u u_ij`` per edge. When the edge features come as a
  band of non-negligible Gaussians (:meth:`GaussianExpansion.banded
  <crystaltwins.layers.GaussianExpansion.banded>`), the gather and ``W_u u_ij`` are a single
  weighted ``embedding_bag``.
* The edge BatchNorm (``bn1``) normalises that ``(E, 2A)`` result in place, and its backward is
  pushed through the (linear) edge map analytically: the per-channel reductions it needs are
  computed on ``(N, 2A)`` / ``(K, 2A)`` tensors, so no ``(E, 2A)`` gradient is formed twice.
  In evaluation mode the running statistics are folded into the per-atom tables and ``W_u``.
* The filter and core halves are separate contiguous ``(E, A)`` tensors throughout, and the
  gate ``sigmoid(f) * softplus(c)`` with the sum over each centre's edges is one autograd node
  that computes its gradients in place.

Per-edge tensor allocations dominate CPU training time (each new large tensor costs page
faults), so these nodes keep them to the minimum.

In training on CPU (float32, banded edge features, edges grouped by centre atom) the edge map,
the edge BatchNorm, the gate and the neighbour sum are instead one call of the fused C++ kernel of
:mod:`crystaltwins.layers.fused_cgconv` when it could be built and was measured faster on this
machine (:func:`fused_kernel_pays`); the PyTorch implementation above computes the same function.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from crystaltwins.layers import fused_cgconv
from crystaltwins.layers.gaussian import GaussianExpansion

log = logging.getLogger(__name__)


def _bags(index: Tensor, num_bags: int) -> tuple[Tensor, Tensor]:
    """``embedding_bag`` ``(input, offsets)`` grouping the positions of ``index`` by value."""
    counts = torch.bincount(index, minlength=num_bags)
    offsets = torch.zeros(num_bags, dtype=torch.long, device=index.device)
    torch.cumsum(counts[:-1], dim=0, out=offsets[1:])
    if index.numel() < 2 or bool((index[1:] >= index[:-1]).all()):
        order = torch.arange(index.numel(), device=index.device)
    else:
        order = torch.argsort(index, stable=True)
    return order, offsets


def _segment_sum(x: Tensor, bags: tuple[Tensor, Tensor]) -> Tensor:
    """Rows of ``x`` ``(E, C)`` summed per bag, ``(num_bags, C)`` (empty bags give zeros).

    Much faster than ``index_add_`` on CPU (parallel over bags). Not for autograd.
    """
    order, offsets = bags
    return F.embedding_bag(order, x, offsets, mode="sum")


class EdgeGraph:
    """Edge-list quantities shared by all the convolutions of one forward pass.

    :param edge_fea: ``(E, K)`` edge features.
    :param edge_index: ``(2, E)`` int64, row 0 centre *i*, row 1 neighbour *j*.
    :param num_atoms: ``N``.
    :param edge_band: optional ``(index, value)``, each ``(E, W)``: the non-zero features of
        every edge (``edge_fea[e, index[e]] == value[e]``, ``edge_fea`` zero elsewhere), as
        given by :meth:`GaussianExpansion.banded`. Speeds the convolutions up; it must describe
        ``edge_fea`` exactly.
    """

    def __init__(
        self,
        edge_fea: Tensor,
        edge_index: Tensor,
        num_atoms: int,
        edge_band: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        if edge_index.ndim != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
        if edge_fea.ndim != 2 or edge_fea.shape[0] != edge_index.shape[1]:
            raise ValueError(
                f"edge_fea {tuple(edge_fea.shape)} does not match edge_index "
                f"{tuple(edge_index.shape)}"
            )
        if edge_band is not None and (
            edge_band[0].shape != edge_band[1].shape or edge_band[0].shape[0] != edge_fea.shape[0]
        ):
            raise ValueError("edge_band index and value must both be (E, W)")
        if edge_index.shape[1] > 0:
            low, high = (int(v) for v in torch.aminmax(edge_index))
            if low < 0 or high >= num_atoms:
                raise ValueError(
                    f"edge_index holds atom {low if low < 0 else high}, outside 0..{num_atoms - 1}"
                )
            if edge_band is not None:
                low, high = (int(v) for v in torch.aminmax(edge_band[0]))
                if low < 0 or high >= edge_fea.shape[1]:
                    raise ValueError(
                        f"edge_band index {low if low < 0 else high} outside the "
                        f"{edge_fea.shape[1]} edge features"
                    )
        self.edge_fea = edge_fea
        self.edge_band = edge_band
        self.centre = edge_index[0]
        self.neighbour = edge_index[1]
        self.num_atoms = int(num_atoms)
        self.num_edges = int(edge_index.shape[1])

    @cached_property
    def centre_bags(self) -> tuple[Tensor, Tensor]:
        """Edges grouped by centre atom, for :func:`_segment_sum`."""
        return _bags(self.centre, self.num_atoms)

    @cached_property
    def centre_offsets(self) -> Tensor | None:
        """``(N + 1,)`` int64 offsets of each centre's edges if they are grouped by centre (the
        edges of atom ``i`` at ``offsets[i]:offsets[i + 1]``), else ``None``."""
        c = self.centre
        if c.numel() > 1 and not bool((c[1:] >= c[:-1]).all()):
            return None
        offsets = torch.zeros(self.num_atoms + 1, dtype=torch.long, device=c.device)
        torch.cumsum(torch.bincount(c, minlength=self.num_atoms), dim=0, out=offsets[1:])
        return offsets

    @cached_property
    def fused_offsets(self) -> Tensor | None:
        """:attr:`centre_offsets` if the graph suits the fused kernel, else ``None``.

        The kernel reads raw memory, so it needs int64 indices (their range is checked when the
        graph is made), a float32 band, and edges grouped by centre; the PyTorch implementation
        handles everything else.
        """
        band = self.edge_band
        if band is None or self.num_edges < 2:
            return None
        index, value = band
        if (
            value.dtype != torch.float32
            or any(t.dtype != torch.long for t in (index, self.centre, self.neighbour))
            or any(t.device.type != "cpu" for t in (index, value, self.centre, self.neighbour))
        ):
            return None
        return self.centre_offsets  # indices were checked to be in range on construction

    @cached_property
    def neighbour_bags(self) -> tuple[Tensor, Tensor]:
        """Edges grouped by neighbour atom, for :func:`_segment_sum`."""
        return _bags(self.neighbour, self.num_atoms)

    @cached_property
    def band_bags(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(edges, offsets, weights)`` to compute ``uᵀ g`` from the band, or ``None``.

        Bag ``k`` lists the edges whose band contains centre ``k``, weighted by ``u_ek``.
        """
        if self.edge_band is None:
            return None
        band_index, band_value = self.edge_band
        width = band_index.shape[1]
        flat = band_index.reshape(-1)
        order, offsets = _bags(flat, self.edge_fea.shape[1])
        return order // width, offsets, band_value.detach().reshape(-1)[order]

    @cached_property
    def bag(self) -> tuple[Tensor, Tensor | None]:
        """``embedding_bag`` input for the edges, rows of ``cat(table_i, table_j[, w_uᵀ])``.

        ``(index, per_sample_weights)``: ``(E, 2)`` and ``None`` without a band, else
        ``(E, 2 + W)`` and ``(E, 2 + W)``.
        """
        n = self.num_atoms
        pair = torch.stack((self.centre, self.neighbour + n), dim=1)
        if self.edge_band is None:
            return pair, None
        band_index, band_value = self.edge_band
        index = torch.cat((pair, band_index + 2 * n), dim=1)
        ones = band_value.new_ones(band_value.shape[0], 2)
        return index, torch.cat((ones, band_value.detach()), dim=1)

    @cached_property
    def moments(self) -> dict[str, Tensor]:
        """Graph moments used by the edge BatchNorm backward.

        ``centre_count``/``neighbour_count`` ``(N,)`` edges per atom as centre/neighbour;
        ``fea_mean`` ``(K,)`` mean edge feature ``ū``; ``centre_fea``/``neighbour_fea``
        ``(N, K)`` ``Σ_{e ∋ atom} (u_e - ū)``; ``fea_scatter`` ``(K, K)``
        ``Σ_e (u_e - ū)(u_e - ū)ᵀ``.
        """
        n, e = self.num_atoms, self.num_edges
        u = self.edge_fea.detach()
        centre_count = torch.bincount(self.centre, minlength=n).to(u.dtype)
        neighbour_count = torch.bincount(self.neighbour, minlength=n).to(u.dtype)
        fea_mean = u.sum(dim=0) / e
        centre_fea = _segment_sum(u, self.centre_bags) - torch.outer(centre_count, fea_mean)
        neighbour_fea = _segment_sum(u, self.neighbour_bags)
        neighbour_fea -= torch.outer(neighbour_count, fea_mean)
        fea_scatter = u.t() @ u - e * torch.outer(fea_mean, fea_mean)
        return {
            "centre_count": centre_count,
            "neighbour_count": neighbour_count,
            "fea_mean": fea_mean,
            "centre_fea": centre_fea,
            "neighbour_fea": neighbour_fea,
            "fea_scatter": fea_scatter,
        }


def _edge_linear(table_i: Tensor, table_j: Tensor, w_u: Tensor, graph: EdgeGraph) -> Tensor:
    """``table_i[centre_e] + table_j[neighbour_e] + w_u @ u_e`` for every edge, ``(E, C)``."""
    index, band_weights = graph.bag
    if band_weights is None:
        out = F.embedding_bag(index, torch.cat((table_i, table_j)), mode="sum")
        return out.addmm_(graph.edge_fea, w_u.t())
    table = torch.cat((table_i, table_j, w_u.t()))
    return F.embedding_bag(index, table, mode="sum", per_sample_weights=band_weights)


def _edge_linear_transpose(grad: Tensor, graph: EdgeGraph) -> tuple[Tensor, Tensor, Tensor]:
    """Adjoint of :func:`_edge_linear`: ``(Σ_{centre} grad, Σ_{neighbour} grad, uᵀ grad)``."""
    g_i = _segment_sum(grad, graph.centre_bags)
    g_j = _segment_sum(grad, graph.neighbour_bags)
    band_bags = graph.band_bags
    if band_bags is None:
        g_u = graph.edge_fea.t() @ grad  # (K, C)
    else:
        edges, offsets, weights = band_bags
        g_u = F.embedding_bag(edges, grad, offsets, mode="sum", per_sample_weights=weights)
    return g_i, g_j, g_u


class _EdgeLinear(torch.autograd.Function):
    """:func:`_edge_linear` as an autograd node (used with fixed normalisation)."""

    @staticmethod
    def forward(
        ctx: Any, table_i: Tensor, table_j: Tensor, w_u: Tensor, graph: EdgeGraph
    ) -> Tensor:
        ctx.graph = graph
        return _edge_linear(table_i, table_j, w_u, graph)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        g_i, g_j, g_u = _edge_linear_transpose(grad.contiguous(), ctx.graph)
        return g_i, g_j, g_u.t(), None


def _column_stats(z: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of every column of ``z`` ``(E, C)``.

    On CPU ``var_mean(dim=0)`` of a row-major matrix is very slow; the statistics kernel of
    ``BatchNorm1d`` itself (what CGCNN's ``bn1`` computes them with) is used instead.
    """
    if z.device.type == "cpu":
        mean, var = torch.batch_norm_update_stats(z, None, None, 0.0)
        return mean, var
    var, mean = torch.var_mean(z, dim=0, correction=0)
    return mean, var


class _EdgeLinearBatchNorm(torch.autograd.Function):
    """``BatchNorm1d`` (batch statistics) of :func:`_edge_linear`, differentiated analytically.

    The ``2C`` output channels are produced as two contiguous ``(E, C)`` halves (CGCNN's filter
    and core). Returns ``(first_half, second_half, mean, var)``, the last two ``(2C,)`` batch
    statistics (biased variance).
    """

    @staticmethod
    def forward(
        ctx: Any,
        h_i: Tensor,
        h_j: Tensor,
        w_u: Tensor,
        gamma: Tensor,
        beta: Tensor,
        graph: EdgeGraph,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c = h_i.shape[1] // 2
        halves, means, variances = [], [], []
        for sl in (slice(0, c), slice(c, 2 * c)):
            z = _edge_linear(h_i[:, sl], h_j[:, sl], w_u[sl], graph)  # (E, C), in place below
            mean, var = _column_stats(z)
            scale = gamma[sl] * torch.rsqrt(var + eps)
            z.mul_(scale).add_(beta[sl] - mean * scale)
            halves.append(z)
            means.append(mean)
            variances.append(var)
        mean, var = torch.cat(means), torch.cat(variances)
        ctx.graph = graph
        ctx.save_for_backward(*halves, h_i, h_j, w_u, gamma, beta, mean, torch.rsqrt(var + eps))
        ctx.mark_non_differentiable(mean, var)
        return halves[0], halves[1], mean, var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_first: Tensor, grad_second: Tensor, _grad_mean: Any, _grad_var: Any
    ) -> tuple[Tensor | None, ...]:
        z_first, z_second, h_i, h_j, w_u, gamma, beta, mean, inv_std = ctx.saved_tensors
        graph: EdgeGraph = ctx.graph
        m = graph.moments
        e = graph.num_edges
        # With x = (z_raw - mean) * inv_std and scale = gamma * inv_std, BatchNorm's backward
        #   dz_raw = scale * (g - mean_e(g) - x * mean_e(g * x))
        # is pushed through the adjoint Sᵀ of the linear edge map z_raw = S [h_i; h_j; w_uᵀ]:
        #   Sᵀ dz_raw = scale * Sᵀg - scale * mean_e(g) Sᵀ1 - mean_e(g * x) * scale * Sᵀx,
        # every term of which is an (N, 2A) or (K, 2A) tensor.
        halves = (z_first, z_second)
        grads = [
            torch.zeros_like(z) if g is None else g.contiguous()
            for g, z in zip((grad_first, grad_second), halves, strict=True)
        ]
        parts = [_edge_linear_transpose(g, graph) for g in grads]
        g_i, g_j, g_u = (torch.cat(blocks, dim=1) for blocks in zip(*parts, strict=True))
        sum_g = g_i.sum(dim=0)
        # Σ_e g (z_raw - mean), from centred per-atom terms (z_raw's mean is
        # mean_i + mean_j + w_u ū): no cancellation in float32
        mean_i = (m["centre_count"] @ h_i) / e
        mean_j = (m["neighbour_count"] @ h_j) / e
        g_u_centred = g_u - torch.outer(m["fea_mean"], sum_g)
        sum_gx = (
            (g_i * (h_i - mean_i)).sum(dim=0)
            + (g_j * (h_j - mean_j)).sum(dim=0)
            + (g_u_centred * w_u.t()).sum(dim=0)
        ) * inv_std
        grad_gamma = sum_gx if ctx.needs_input_grad[3] else None
        grad_beta = sum_g if ctx.needs_input_grad[4] else None
        if not any(ctx.needs_input_grad[:3]):
            return None, None, None, grad_gamma, grad_beta, None, None

        scale = gamma * inv_std
        scaled_mean_g = scale * (sum_g / e)
        mean_gx = sum_gx / e
        # scale * Sᵀx for the atom blocks, from the normalised output z = gamma * x + beta:
        # inv_std * Σ (z - beta) over each atom's edges (exact, also where gamma = 0) ...
        zs_i = torch.cat([_segment_sum(z, graph.centre_bags) for z in halves], dim=1)
        zs_j = torch.cat([_segment_sum(z, graph.neighbour_bags) for z in halves], dim=1)
        sx_i = (zs_i - torch.outer(m["centre_count"], beta)) * inv_std
        sx_j = (zs_j - torch.outer(m["neighbour_count"], beta)) * inv_std
        # ... and for the u block scale * inv_std * Σ_e (u_e - ū)(z_raw_e - mean), from per-atom
        # sums of centred features
        raw_u = (
            m["centre_fea"].t() @ (h_i - mean_i)
            + m["neighbour_fea"].t() @ (h_j - mean_j)
            + m["fea_scatter"] @ w_u.t()
        )
        sx_u = raw_u * (scale * inv_std)
        grad_h_i = scale * g_i - torch.outer(m["centre_count"], scaled_mean_g) - sx_i * mean_gx
        grad_h_j = scale * g_j - torch.outer(m["neighbour_count"], scaled_mean_g) - sx_j * mean_gx
        grad_w_u = scale * g_u_centred - sx_u * mean_gx
        return grad_h_i, grad_h_j, grad_w_u.t(), grad_gamma, grad_beta, None, None


class _GatedSum(torch.autograd.Function):
    """``Σ_{e: centre_e = i} sigmoid(f_e) * softplus(c_e)``, ``(N, C)``."""

    @staticmethod
    def forward(ctx: Any, nbr_filter: Tensor, nbr_core: Tensor, graph: EdgeGraph) -> Tensor:
        gate = torch.sigmoid(nbr_filter)
        core = F.softplus(nbr_core)
        message = gate * core
        ctx.save_for_backward(nbr_core, graph.centre, gate, core)
        return _segment_sum(message, graph.centre_bags)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        nbr_core, centre, gate, core = ctx.saved_tensors
        grad_msg = grad.index_select(0, centre)  # (E, C)
        # d/dc: g * sigmoid(f) * sigmoid(c)
        grad_core = torch.sigmoid(nbr_core).mul_(gate).mul_(grad_msg)
        # d/df: g * softplus(c) * sigmoid(f) * (1 - sigmoid(f)), in grad_msg's buffer
        grad_filter = grad_msg.mul_(core).mul_(gate)
        grad_filter.addcmul_(grad_filter, gate, value=-1.0)
        return grad_filter, grad_core, None


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def fused_kernel_pays() -> bool:
    """Whether training convolutions on this CPU take the fused kernel
    (:mod:`~crystaltwins.layers.fused_cgconv`): it is built and not disabled, and forced
    (``CRYSTALTWINS_FUSED_KERNELS=1``, :func:`~crystaltwins.layers.fused_cgconv.forced`) or, by
    default, measured faster than the PyTorch operations at the current thread count
    (:func:`measure_kernel_choice`, once per machine and thread count, remembered beside the
    library)."""
    if not fused_cgconv.available():
        return False
    return fused_cgconv.is_forced() or _measured_choice(torch.get_num_threads())


@functools.cache
def _measured_choice(threads: int) -> bool:
    choice = fused_cgconv.remembered_choice(threads)
    if choice is None:
        try:
            choice = measure_kernel_choice()
        except Exception as exc:  # never fail a user's step over a timing: keep PyTorch
            log.warning("fused CGConv kernel not used: its timing failed (%s)", exc)
            return False
        fused_cgconv.remember_choice(threads, choice)
        log.info(
            "fused CGConv kernel %s here (%d threads: kernel %.1f ms, PyTorch %.1f ms)",
            "used" if choice["fused"] else "not used",
            threads,
            choice["fused_ms"],
            choice["torch_ms"],
        )
    return bool(choice["fused"])


def measure_kernel_choice(rounds: int = 7, atoms: int = 640, features: int = 64) -> dict[str, Any]:
    """Time one training convolution (forward + backward) by the fused kernel and by the PyTorch
    operations, alternating, at the current thread count: a perovskite batch's size by default
    (640 atoms, 12 edges each within 5-atom crystals, 64 features, 41 Gaussians; float32 on the
    CPU whatever the defaults). Leaves the random number generators as they were; works inside
    ``no_grad`` and ``inference_mode``.

    :returns: ``{"fused": kernel median < PyTorch median, "fused_ms", "torch_ms" (medians),
        "threads", "rounds", "torch", "cpu"}``.
    :raises RuntimeError: when the kernel does not apply to the timed convolution.
    """
    cpu = {"dtype": torch.float32, "device": "cpu"}
    with (
        torch.random.fork_rng(devices=[]),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        gen = torch.Generator().manual_seed(0)
        centre = torch.arange(atoms, device="cpu").repeat_interleave(12)
        neighbour = (centre // 5) * 5 + torch.randint(0, 5, (centre.numel(),), generator=gen)
        distance = 1.0 + 7.0 * torch.rand(centre.numel(), generator=gen, **cpu)
        gaussian = GaussianExpansion().to(**cpu)
        edge_fea = gaussian(distance)
        edge_index = torch.stack((centre, neighbour))
        graph = EdgeGraph(edge_fea, edge_index, atoms, edge_band=gaussian.banded(distance))
        conv = CGConv(features, edge_fea.shape[1]).to(**cpu).train()
        atom_fea = torch.randn(atoms, features, generator=gen, **cpu).requires_grad_(True)
        grad = torch.randn(atoms, features, generator=gen, **cpu)
        with fused_cgconv.forced():
            if not conv._can_fuse(atom_fea, graph):
                raise RuntimeError("the kernel does not apply to the timed convolution")
        times: dict[str, list[float]] = {"fused": [], "torch": []}
        for round_ in range(rounds + 2):  # the first two rounds warm up
            for name, context in (("fused", fused_cgconv.forced), ("torch", fused_cgconv.disabled)):
                with context():
                    start = time.perf_counter()
                    conv(atom_fea, edge_fea, edge_index, graph).backward(grad)
                    if round_ >= 2:
                        times[name].append(1e3 * (time.perf_counter() - start))
    fused_ms, torch_ms = (statistics.median(times[n]) for n in ("fused", "torch"))
    return {
        "fused": fused_ms < torch_ms,
        "fused_ms": fused_ms,
        "torch_ms": torch_ms,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "torch": torch.__version__,
        "cpu": fused_cgconv.cpu_model(),
    }


def plain_path(x: Tensor) -> bool:
    """Whether convolutions on ``x`` take the plain formulation (:meth:`CGConv.gated_sum`):
    on accelerators, where a few large kernels without host synchronisation are fastest; the
    CPU uses the optimised paths (fused kernel or edge-list autograd nodes)."""
    return x.device.type != "cpu"


class CGConv(nn.Module):
    r"""The gated convolution of CGCNN (Xie & Grossman, PRL 2018, eq. 5), on an edge list.

    For every edge :math:`(i, j)` with Gaussian features :math:`u_{ij}`:

    .. math::

        z_{ij} &= W [v_i \oplus v_j \oplus u_{ij}] + b \\
        f_{ij}, c_{ij} &= \mathrm{chunk}(\mathrm{BN}_1(z_{ij})) \\
        v_i' &= \mathrm{softplus}\Big(v_i + \mathrm{BN}_2\big(
            \textstyle\sum_j \sigma(f_{ij}) \odot \mathrm{softplus}(c_{ij})\big)\Big)

    ``BN_1`` normalises over edges, ``BN_2`` over atoms. Atoms without edges get a zero sum.

    The parameters are those of the original code (``fc_full``, ``bn1``, ``bn2``) so that
    published weights load unchanged; ``fc_full`` is applied split (see the module docstring).
    ``bn1`` keeps its ``BatchNorm1d`` semantics: batch statistics with the biased variance in
    training, running statistics updated with ``momentum`` and the unbiased variance, running
    statistics in evaluation unless ``track_running_stats`` is off.

    :param atom_fea_len: ``A``, width of the atom features.
    :param nbr_fea_len: ``K``, width of the edge (Gaussian) features.
    """

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = int(atom_fea_len)
        self.nbr_fea_len = int(nbr_fea_len)
        self.fc_full = nn.Linear(2 * self.atom_fea_len + self.nbr_fea_len, 2 * self.atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * self.atom_fea_len)
        self.bn2 = nn.BatchNorm1d(self.atom_fea_len)

    def _normalised_edges(self, atom_fea: Tensor, graph: EdgeGraph) -> tuple[Tensor, Tensor]:
        """``bn1(fc_full(v_i ⊕ v_j ⊕ u_ij)).chunk(2, 1)`` for every edge, 2 × ``(E, A)``."""
        a = self.atom_fea_len
        weight = self.fc_full.weight  # (2A, 2A + K) = [W_i | W_j | W_u]
        h_i = F.linear(atom_fea, weight[:, :a], self.fc_full.bias)  # (N, 2A)
        h_j = F.linear(atom_fea, weight[:, a : 2 * a])  # (N, 2A)
        w_u = weight[:, 2 * a :]  # (2A, K)
        bn = self.bn1
        gamma = bn.weight if bn.weight is not None else h_i.new_ones(2 * a)
        beta = bn.bias if bn.bias is not None else h_i.new_zeros(2 * a)
        use_batch_stats = self.training or not bn.track_running_stats or bn.running_mean is None
        if not use_batch_stats:  # fixed affine map: fold it into the tables
            scale = gamma * torch.rsqrt(bn.running_var + bn.eps)
            shift = beta - bn.running_mean * scale
            table_i = torch.addcmul(shift, h_i, scale)
            table_j = h_j * scale
            w_u = w_u * scale.unsqueeze(1)
            return tuple(
                _EdgeLinear.apply(table_i[:, sl], table_j[:, sl], w_u[sl], graph)
                for sl in (slice(0, a), slice(a, 2 * a))
            )
        if graph.num_edges < 2:
            raise ValueError(
                f"the edge BatchNorm needs more than 1 edge in training, got {graph.num_edges}"
            )
        nbr_filter, nbr_core, mean, var = _EdgeLinearBatchNorm.apply(
            h_i, h_j, w_u, gamma, beta, graph, bn.eps
        )
        if self.training and bn.track_running_stats and bn.running_mean is not None:
            self._update_running_stats(mean, var, graph.num_edges)
        return nbr_filter, nbr_core

    def _can_fuse(self, atom_fea: Tensor, graph: EdgeGraph) -> bool:
        """Whether the fused CPU kernel applies: training-mode batch statistics on float32 CPU
        tensors outside autocast, a graph that suits it (:attr:`EdgeGraph.fused_offsets`) and of
        these atoms, the kernel built, and faster here (:func:`fused_kernel_pays`)."""
        bn = self.bn1
        params = (self.fc_full.weight, self.fc_full.bias, bn.weight, bn.bias)
        return (
            self.training
            and atom_fea.device.type == "cpu"
            and atom_fea.dtype == torch.float32
            and all(p is not None and p.dtype == torch.float32 for p in params)
            and not _autocast_on_cpu()
            and graph.num_atoms == atom_fea.shape[0]
            and fused_cgconv.available()
            and graph.fused_offsets is not None
            and fused_kernel_pays()
        )

    def _fused_gated_sum(self, atom_fea: Tensor, graph: EdgeGraph) -> Tensor:
        """Gated neighbour sums ``(N, A)`` with :class:`FusedGatedConvolution`."""
        a = self.atom_fea_len
        weight = self.fc_full.weight
        h_i = F.linear(atom_fea, weight[:, :a], self.fc_full.bias)  # (N, 2A)
        h_j = F.linear(atom_fea, weight[:, a : 2 * a])  # (N, 2A)
        bn = self.bn1
        summed, mean, var = fused_cgconv.FusedGatedConvolution.apply(
            h_i,
            h_j,
            weight[:, 2 * a :],
            bn.weight,
            bn.bias,
            graph.edge_band,
            graph.neighbour,
            graph.fused_offsets,
            bn.eps,
        )
        if bn.track_running_stats and bn.running_mean is not None:
            self._update_running_stats(mean, var, graph.num_edges)
        return summed

    def gated_sum(self, atom_fea: Tensor, edge_fea: Tensor, edge_index: Tensor) -> Tensor:
        """``Σ_j σ(f_ij) ⊙ softplus(c_ij)`` ``(N, A)`` written plainly, as CGCNN writes it.

        The specification of the optimised CPU paths (tests compare them with it) and the GPU
        path: a handful of large kernels (gather, one matrix product, BatchNorm, gate, one
        ``index_add_``) and no synchronisation with the host.
        """
        centre, neighbour = edge_index
        z = self.fc_full(torch.cat((atom_fea[centre], atom_fea[neighbour], edge_fea), dim=1))
        nbr_filter, nbr_core = self.bn1(z).chunk(2, dim=1)
        message = torch.sigmoid(nbr_filter) * F.softplus(nbr_core)
        return atom_fea.new_zeros(atom_fea.shape[0], self.atom_fea_len).index_add_(
            0, centre, message
        )

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: int) -> None:
        bn = self.bn1
        bn.num_batches_tracked.add_(1)
        momentum = (
            1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
        )
        unbiased = var * (n / (n - 1))
        bn.running_mean.mul_(1.0 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1.0 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)

    def forward(
        self,
        atom_fea: Tensor,
        edge_fea: Tensor,
        edge_index: Tensor,
        graph: EdgeGraph | None = None,
    ) -> Tensor:
        """Convolve.

        :param atom_fea: ``(N, A)`` atom features.
        :param edge_fea: ``(E, K)`` edge features (Gaussian-expanded distances).
        :param edge_index: ``(2, E)`` int64, row 0 the centre atom *i*, row 1 the neighbour *j*.
        :param graph: :class:`EdgeGraph` of ``(edge_fea, edge_index)``, to share per-graph
            work between convolutions; built here when ``None``.
        :returns: ``(N, A)`` updated atom features.
        """
        n = atom_fea.shape[0]
        if plain_path(atom_fea):  # few large kernels, no host synchronisation
            return F.softplus(atom_fea + self.bn2(self.gated_sum(atom_fea, edge_fea, edge_index)))
        if graph is None or graph.edge_fea is not edge_fea:
            graph = EdgeGraph(edge_fea, edge_index, n)
        if graph.num_edges == 0:
            summed = atom_fea.new_zeros(n, self.atom_fea_len)
        elif self._can_fuse(atom_fea, graph):
            summed = self._fused_gated_sum(atom_fea, graph)
        else:
            nbr_filter, nbr_core = self._normalised_edges(atom_fea, graph)  # (E, A) each
            summed = _GatedSum.apply(nbr_filter, nbr_core, graph)  # (N, A)
        return F.softplus(atom_fea + self.bn2(summed))

    def extra_repr(self) -> str:
        return f"atom_fea_len={self.atom_fea_len}, nbr_fea_len={self.nbr_fea_len}"
