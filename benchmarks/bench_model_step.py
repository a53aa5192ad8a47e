"""One Crystal Twins pre-training step: our edge-list CGCNN vs the original padded layout.

Step = two views of a batch of 64 crystals → encoder + projector → Barlow Twins loss →
backward → Adam step.

* ``ours``: :class:`crystaltwins.models.CGCNNEncoder` + :class:`ProjectionHead` +
  :class:`crystaltwins.losses.BarlowTwinsLoss` on a :class:`CrystalGraphBatch` (edge list; the
  Gaussian expansion of the distances is computed inside the step), with the fused CPU kernel of
  the convolutions (:mod:`crystaltwins.layers.fused_cgconv`, taken here whether or not it was
  measured faster on this machine: training takes it only where it was).
* ``ours, PyTorch ops``: the same model with the kernel switched off
  (:func:`~crystaltwins.layers.fused_cgconv.disabled`), the fallback without a compiler.
* ``reference``: CGCNN as in the original CGCNN / Crystal Twins code, written out below: padded
  ``(N, M)`` neighbour indices and precomputed ``(N, M, 41)`` Gaussian features (built by the
  data loader there, so not timed here), ``fc_full`` applied to the concatenated
  ``(N, M, 2A + K)`` tensor, per-crystal pooling over a list of index tensors, and the loss with
  ``BatchNorm1d(affine=False)``.

Both run on identical inputs with identical initial weights (the script first checks that
they compute the same loss), the reference being given the same Gaussian features (no
denormals). Steps of the two are interleaved and the median time is reported, so that a change
of machine load affects both alike. Run::

    python benchmarks/bench_model_step.py [--steps 20] [--threads 2] [--tune-malloc] [--scaling]

``--scaling`` also times 5-atom batches of 2, 8, 64 and 128 crystals and fits
``ms/step = fixed + per_crystal * batch`` for both models, separating the per-step cost
(operation count, Python) from the per-crystal work.

``--tune-malloc`` keeps freed memory in the process (glibc ``mallopt``) instead of returning
it to the OS: on machines where page faults are expensive (VMs) every step of both models
otherwise re-faults its large temporaries.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn

from crystaltwins.graph.batch import CrystalGraphBatch
from crystaltwins.layers import fused_cgconv
from crystaltwins.layers.gaussian import GaussianExpansion
from crystaltwins.losses import BarlowTwinsLoss
from crystaltwins.models import CGCNNEncoder, CrystalTwinsModel, ProjectionHead

N_FEATURES = 92
MAX_Z = 100
M = 12


# --------------------------------------------------------------------------- reference CGCNN
class RefConvLayer(nn.Module):
    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.sigmoid = nn.Sigmoid()
        self.softplus1 = nn.Softplus()
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)
        self.softplus2 = nn.Softplus()

    def forward(self, atom_in_fea, nbr_fea, nbr_fea_idx):
        n, m = nbr_fea_idx.shape
        atom_nbr_fea = atom_in_fea[nbr_fea_idx, :]
        total_nbr_fea = torch.cat(
            [atom_in_fea.unsqueeze(1).expand(n, m, self.atom_fea_len), atom_nbr_fea, nbr_fea],
            dim=2,
        )
        total_gated_fea = self.fc_full(total_nbr_fea)
        total_gated_fea = self.bn1(total_gated_fea.view(-1, self.atom_fea_len * 2)).view(
            n, m, self.atom_fea_len * 2
        )
        nbr_filter, nbr_core = total_gated_fea.chunk(2, dim=2)
        nbr_filter = self.sigmoid(nbr_filter)
        nbr_core = self.softplus1(nbr_core)
        nbr_sumed = torch.sum(nbr_filter * nbr_core, dim=1)
        nbr_sumed = self.bn2(nbr_sumed)
        return self.softplus2(atom_in_fea + nbr_sumed)


class RefCGCNN(nn.Module):
    def __init__(self, orig_atom_fea_len, nbr_fea_len, atom_fea_len=64, n_conv=3, h_fea_len=128):
        super().__init__()
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([RefConvLayer(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        self.conv_to_fc_softplus = nn.Softplus()
        self.fc_head = nn.Sequential(
            nn.Linear(h_fea_len, h_fea_len), nn.Softplus(), nn.Linear(h_fea_len, 256)
        )

    def forward(self, atom_fea, nbr_fea, nbr_fea_idx, crystal_atom_idx):
        atom_fea = self.embedding(atom_fea)
        for conv_func in self.convs:
            atom_fea = conv_func(atom_fea, nbr_fea, nbr_fea_idx)
        crys_fea = torch.cat(
            [torch.mean(atom_fea[idx_map], dim=0, keepdim=True) for idx_map in crystal_atom_idx],
            dim=0,
        )
        crys_fea = self.conv_to_fc(self.conv_to_fc_softplus(crys_fea))
        crys_fea = self.conv_to_fc_softplus(crys_fea)
        return self.fc_head(crys_fea)


class RefBarlowTwinsLoss(nn.Module):
    def __init__(self, embed_size=256, lambd=0.0051):
        super().__init__()
        self.lambd = lambd
        self.bn = nn.BatchNorm1d(embed_size, affine=False)

    def forward(self, z1, z2):
        c = self.bn(z1).T @ self.bn(z2)
        c.div_(z1.shape[0])
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = c.flatten()[:-1].view(c.shape[0] - 1, c.shape[0] + 1)[:, 1:].flatten()
        return on_diag + self.lambd * off_diag.pow_(2).sum()


# --------------------------------------------------------------------------- data
def make_view(rng: np.random.Generator, n_crystals: int, atoms_per_crystal: int):
    """A random but realistic batch: every atom has M=12 neighbours in its crystal at 1.8-8 Å
    (periodic images make repeated neighbours normal), sorted by distance."""
    n_atoms = n_crystals * atoms_per_crystal
    z = rng.integers(1, MAX_Z + 1, size=n_atoms)
    crystal = np.repeat(np.arange(n_crystals), atoms_per_crystal)
    first = crystal * atoms_per_crystal
    nbr_idx = first[:, None] + rng.integers(0, atoms_per_crystal, size=(n_atoms, M))
    dist = np.sort(rng.uniform(1.8, 8.0, size=(n_atoms, M)), axis=1).astype(np.float32)
    ours = CrystalGraphBatch(
        atomic_numbers=torch.as_tensor(z, dtype=torch.long),
        edge_index=torch.as_tensor(
            np.stack([np.repeat(np.arange(n_atoms), M), nbr_idx.reshape(-1)]), dtype=torch.long
        ),
        edge_distance=torch.as_tensor(dist.reshape(-1)),
        crystal_index=torch.as_tensor(crystal, dtype=torch.long),
        num_crystals=n_crystals,
    )
    return ours, (z, dist, nbr_idx, crystal)


def reference_inputs(raw, table: torch.Tensor, gaussian: GaussianExpansion):
    z, dist, nbr_idx, crystal = raw
    atom_fea = table[torch.as_tensor(z)]
    nbr_fea = gaussian(torch.as_tensor(dist))  # precomputed by the dataset in CGCNN
    idx = torch.as_tensor(nbr_idx, dtype=torch.long)
    crystal_atom_idx = [
        torch.as_tensor(np.flatnonzero(crystal == c), dtype=torch.long)
        for c in range(int(crystal.max()) + 1)
    ]
    return atom_fea, nbr_fea, idx, crystal_atom_idx


# --------------------------------------------------------------------------- timing
def time_interleaved(steps: dict, n_steps: int, n_warmup: int = 3) -> dict[str, float]:
    """Median seconds per step of every function, running them alternately so that a change of
    machine load affects all alike."""
    for _ in range(n_warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n_steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(atoms_per_crystal: int, batch_size: int, n_steps: int, seed: int = 0) -> dict[str, float]:
    """Crystals per second of ``ours``, ``plain`` (ours with PyTorch ops) and ``reference``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    table = torch.zeros(MAX_Z + 1, N_FEATURES)
    table[1:] = torch.rand(MAX_Z, N_FEATURES).round()  # one-hot-like 0/1 features

    encoder = CGCNNEncoder(table, atom_fea_len=64, n_conv=3, h_fea_len=128)
    ours = CrystalTwinsModel(encoder, ProjectionHead(128, 128, 256))
    plain = copy.deepcopy(ours)
    reference = RefCGCNN(N_FEATURES, encoder.gaussian.num_features)
    ref_state = {
        k.replace("encoder.", "").replace("projector.", "fc_head."): v
        for k, v in ours.state_dict().items()
    }
    reference.load_state_dict(ref_state, strict=True)

    views = [make_view(rng, batch_size, atoms_per_crystal) for _ in range(2)]
    ours_views = [v[0] for v in views]
    ref_views = [reference_inputs(v[1], table, encoder.gaussian) for v in views]

    our_loss = BarlowTwinsLoss()
    ref_loss = RefBarlowTwinsLoss()
    with torch.no_grad(), fused_cgconv.forced():  # same function on the same inputs
        a = our_loss(ours(ours_views[0]), ours(ours_views[1]))
        b = ref_loss(reference(*ref_views[0]), reference(*ref_views[1]))
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"models disagree: ours {a.item()} vs reference {b.item()}")

    with torch.no_grad(), fused_cgconv.disabled():
        c = our_loss(plain(ours_views[0]), plain(ours_views[1]))
    if not torch.allclose(a, c, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"fused kernel disagrees: {a.item()} vs {c.item()}")

    our_opt = torch.optim.Adam(ours.parameters(), lr=1e-5, weight_decay=1e-6)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-5, weight_decay=1e-6)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-5, weight_decay=1e-6)

    def our_step() -> None:
        with fused_cgconv.forced():
            our_opt.zero_grad(set_to_none=True)
            loss = our_loss(ours(ours_views[0]), ours(ours_views[1]))
            loss.backward()
            our_opt.step()

    def plain_step() -> None:
        with fused_cgconv.disabled():
            plain_opt.zero_grad(set_to_none=True)
            loss = our_loss(plain(ours_views[0]), plain(ours_views[1]))
            loss.backward()
            plain_opt.step()

    def ref_step() -> None:
        ref_opt.zero_grad(set_to_none=True)
        loss = ref_loss(reference(*ref_views[0]), reference(*ref_views[1]))
        loss.backward()
        ref_opt.step()

    steps = {"ours": our_step, "plain": plain_step, "reference": ref_step}
    if not fused_cgconv.available():
        del steps["plain"]
    t = time_interleaved(steps, n_steps)
    return {name: batch_size / seconds for name, seconds in t.items()}


def tune_malloc() -> bool:
    """Ask glibc to keep freed memory (large mmap threshold, no trimming)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    return bool(ok and libc.mallopt(m_trim_threshold, 2**30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tune-malloc", action="store_true")
    parser.add_argument(
        "--scaling", action="store_true", help="also fit fixed + per-crystal step cost"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = "tuned malloc" if args.tune_malloc and tune_malloc() else "default malloc"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{malloc}, load average {os.getloadavg()[0]:.2f}"
    )
    if not fused_cgconv.available():
        print("fused kernels unavailable: 'ours' is the PyTorch implementation")
    print(
        f"{'case (crystals/s)':<26}{'ours':>9}{'reference':>11}{'ratio':>8}"
        f"{'ours, PyTorch ops':>19}{'ratio':>8}"
    )
    for atoms, label in ((5, "perovskite-like, 5 atoms"), (40, "40 atoms")):
        r = run(atoms, args.batch_size, args.steps)
        ours, ref, plain = r["ours"], r["reference"], r.get("plain", float("nan"))
        print(
            f"{label:<26}{ours:>9.1f}{ref:>11.1f}{ours / ref:>7.2f}x"
            f"{plain:>19.1f}{plain / ref:>7.2f}x"
        )
    if args.scaling:
        scaling(args.steps)


def scaling(n_steps: int, sizes: tuple[int, ...] = (2, 8, 64, 128)) -> None:
    """Step time against batch size (5-atom crystals), with a least-squares line."""
    print(f"\n{'5-atom batch':<14}{'ours (ms/step)':>16}{'reference':>12}{'PyTorch ops':>13}")
    rows = []
    for size in sizes:
        r = run(5, size, n_steps)
        plain = r.get("plain", float("nan"))
        rows.append((size, 1e3 * size / r["ours"], 1e3 * size / r["reference"], 1e3 * size / plain))
        print(f"{size:<14}{rows[-1][1]:>16.2f}{rows[-1][2]:>12.2f}{rows[-1][3]:>13.2f}")
    x = np.array([r[0] for r in rows], dtype=float)
    for name, column in (("ours", 1), ("reference", 2), ("PyTorch ops", 3)):
        per_crystal, fixed = np.polyfit(x, np.array([r[column] for r in rows]), 1)
        print(f"{name:<12} fixed {fixed:6.2f} ms/step, {1e3 * per_crystal:6.1f} µs per crystal")


if __name__ == "__main__":
    main()
