"""The fused CPU kernel of CGConv (training mode) against CGCNN written plainly, and its fallbacks."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from crystaltwins.layers import GaussianExpansion, cgcnn_conv, fused_cgconv
from crystaltwins.layers.cgcnn_conv import EdgeGraph
from tests.layers.test_cgconv import naive_cgconv, pair

needs_kernel = pytest.mark.skipif(
    not fused_cgconv.available(), reason="fused kernels not built here (no C++ compiler/OpenMP)"
)


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """A separate kernel cache and a fresh load; the process-wide library is restored after."""
    monkeypatch.setenv("CRYSTALTWINS_CACHE", str(tmp_path))
    fused_cgconv.load_library.cache_clear()
    cgcnn_conv._measured_choice.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    fused_cgconv.load_library.cache_clear()
    cgcnn_conv._measured_choice.cache_clear()


def sorted_banded_graph(n_atoms=30, edges_per_atom=12, seed=3, empty=(0, 10, 29), features=16):
    """Edges grouped by centre (as the data pipeline makes them), some atoms without edges."""
    gen = torch.Generator().manual_seed(seed)
    centres = [i for i in range(n_atoms) if i not in empty]
    centre = torch.tensor(centres).repeat_interleave(edges_per_atom)
    neighbour = torch.randint(0, n_atoms, (centre.numel(),), generator=gen)
    dist = 0.5 + 7.5 * torch.rand(centre.numel(), generator=gen)
    gaussian = GaussianExpansion()
    edge_index = torch.stack((centre, neighbour))
    atom_fea = torch.randn(n_atoms, features, generator=gen) * 2.0 + 1.0
    return atom_fea, gaussian(dist), edge_index, gaussian.banded(dist)


def count_fused_calls(monkeypatch, force: bool = True) -> list[int]:
    """Count the kernel's calls; ``force``: take it wherever it applies, whether or not it was
    measured faster on this machine (these tests are about the kernel)."""
    if force:
        monkeypatch.setenv(fused_cgconv.ENV_SWITCH, "1")
    calls = []
    apply = fused_cgconv.FusedGatedConvolution.apply

    def counting(*args):
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(fused_cgconv.FusedGatedConvolution, "apply", counting)
    return calls


def assert_close_to_max(actual, expected, tol, msg=""):
    """``|actual - expected| <= tol * max|expected|`` (float32 rounding of sums of many terms)."""
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= tol * scale, f"{msg}: max error {error:.3g} vs max value {scale:.3g}"


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("bias_shift", [0.0, 50.0])
@pytest.mark.parametrize("features", [16, 24])  # 2A = 48: the kernel's 32-channel blocks and a rest
def test_fused_matches_naive_training(monkeypatch, threads, bias_shift, features):
    """Outputs, gradients and running statistics as CGCNN's code computes them in float64."""
    ours, naive = pair(a=features)
    naive = naive.double()
    with torch.no_grad():
        ours.fc_full.bias.add_(bias_shift)
        naive.fc_full.bias.add_(bias_shift)
    atom_fea, edge_fea, edge_index, band = sorted_banded_graph(features=features)
    calls = count_fused_calls(monkeypatch)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x1 = atom_fea.clone().requires_grad_()
        x2 = atom_fea.double().requires_grad_()
        graph = EdgeGraph(edge_fea, edge_index, atom_fea.shape[0], edge_band=band)
        out1 = ours(x1, edge_fea, edge_index, graph)
        out2 = naive_cgconv(naive, x2, edge_fea.double(), edge_index)
        grad = torch.randn_like(out1)
        out1.backward(grad)
        out2.backward(grad.double())
    finally:
        torch.set_num_threads(previous)
    assert calls == [1]
    assert torch.isfinite(out1).all()  # atoms without edges of their own included
    torch.testing.assert_close(out1, out2.float(), atol=1e-5, rtol=1e-5)
    assert_close_to_max(x1.grad, x2.grad, 1e-5, "atom features")
    for (name, p1), (_, p2) in zip(ours.named_parameters(), naive.named_parameters(), strict=True):
        if name == "fc_full.bias":  # zero in exact arithmetic (BatchNorm removes it): rounding
            assert p1.grad.abs().max() < 1e-4
            continue
        assert_close_to_max(p1.grad, p2.grad, 1e-5, name)
    for (name, b1), (_, b2) in zip(ours.named_buffers(), naive.named_buffers(), strict=True):
        torch.testing.assert_close(b1, b2.to(b1.dtype), atol=1e-5, rtol=1e-5, msg=name)


@needs_kernel
def test_fused_path_skipped_where_it_does_not_apply(monkeypatch):
    conv, _ = pair()
    atom_fea, edge_fea, edge_index, band = sorted_banded_graph()
    calls = count_fused_calls(monkeypatch)
    # unsorted centres
    order = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    shuffled = EdgeGraph(
        edge_fea[order], edge_index[:, order], 30, edge_band=(band[0][order], band[1][order])
    )
    assert shuffled.centre_offsets is None
    conv(atom_fea, edge_fea[order], edge_index[:, order], shuffled)
    # no band, evaluation mode, float64, disabled
    conv(atom_fea, edge_fea, edge_index)
    banded = EdgeGraph(edge_fea, edge_index, 30, edge_band=band)
    with fused_cgconv.disabled():
        conv(atom_fea, edge_fea, edge_index, banded)
    conv.eval()
    conv(atom_fea, edge_fea, edge_index, banded)
    conv.train()
    conv64 = copy.deepcopy(conv).double()
    graph64 = EdgeGraph(edge_fea.double(), edge_index, 30, edge_band=(band[0], band[1].double()))
    conv64(atom_fea.double(), edge_fea.double(), edge_index, graph64)
    assert calls == []
    conv(atom_fea, edge_fea, edge_index, banded)
    assert calls == [1]


@needs_kernel
def test_real_augmented_batches_take_the_fused_path(monkeypatch, data_dir):
    """Views made by the pre-training pipeline have edges grouped by centre; the fused and the
    PyTorch implementations give the same Barlow Twins loss and gradients on them."""
    from crystaltwins.data.dataset import AugmentedPairCollator
    from crystaltwins.graph.crystal_graph import build_crystal_graph
    from crystaltwins.losses import BarlowTwinsLoss
    from crystaltwins.models import CGCNNEncoder, CrystalTwinsModel, ProjectionHead
    from crystaltwins.transforms import build_augmentation
    from tests.helpers import read_structures
    from tests.models.conftest import random_table

    structures = read_structures(data_dir / "perovskites.csv.gz", 24)
    structures += read_structures(data_dir / "hoip.csv.gz", 8)
    graphs = [build_crystal_graph(s, id=i) for i, s in structures]
    views = AugmentedPairCollator(build_augmentation("rp,am,em"), seed=0)(
        [(g, (i, 0)) for i, g in enumerate(graphs)]
    )
    torch.manual_seed(0)
    model = CrystalTwinsModel(CGCNNEncoder(random_table()), ProjectionHead(128, 128, 256))
    reference = copy.deepcopy(model)
    loss = BarlowTwinsLoss()
    calls = count_fused_calls(monkeypatch)
    fused_loss = loss(model(views[0]), model(views[1]))
    fused_loss.backward()
    assert len(calls) == 2 * len(model.encoder.convs)
    with fused_cgconv.disabled():
        plain_loss = loss(reference(views[0]), reference(views[1]))
        plain_loss.backward()
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-4, atol=1e-4)
    for (name, p1), (_, p2) in zip(
        model.named_parameters(), reference.named_parameters(), strict=True
    ):
        scale = p2.grad.abs().max().item()
        if name.endswith("fc_full.bias") or name == "projector.2.bias":
            continue  # zero in exact arithmetic (a BatchNorm or standardisation follows)
        np.testing.assert_allclose(p1.grad, p2.grad, atol=2e-4 * scale, err_msg=name)


def test_switched_off_by_environment(monkeypatch, fresh_library):
    monkeypatch.setenv(fused_cgconv.ENV_SWITCH, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused_cgconv.load_library() is None
        assert not fused_cgconv.available()


def test_missing_compiler_warns_and_training_still_works(monkeypatch, fresh_library):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler '/nonexistent/c\\+\\+'"):
        assert fused_cgconv.load_library() is None
    conv, naive = pair()
    atom_fea, edge_fea, edge_index, band = sorted_banded_graph()
    graph = EdgeGraph(edge_fea, edge_index, 30, edge_band=band)
    torch.testing.assert_close(
        conv(atom_fea, edge_fea, edge_index, graph),
        naive_cgconv(naive, atom_fea, edge_fea, edge_index),
        atol=1e-5,
        rtol=1e-5,
    )


@needs_kernel
def test_compile_errors_are_reported_and_fall_back(monkeypatch, fresh_library):
    broken = fresh_library / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(fused_cgconv, "SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="failed"):
        assert fused_cgconv.load_library() is None
    assert not list((fresh_library / "kernels").glob("*.so"))


@needs_kernel
def test_built_once_into_the_cache_folder(fresh_library):
    lib = fused_cgconv.load_library()
    assert lib is not None and lib.ct_cgconv_abi_version() == fused_cgconv.ABI_VERSION
    built = list((fresh_library / "kernels").glob("cgconv_fused-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    fused_cgconv.load_library.cache_clear()
    assert fused_cgconv.load_library() is not None
    assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not [p for p in (fresh_library / "kernels").iterdir() if p.is_dir()]  # no leftovers


@needs_kernel
def test_loading_the_kernel_keeps_denormals():
    """The library is linked without -ffast-math's start-up code (flush-to-zero in GCC < 13)."""
    assert fused_cgconv.load_library() is not None
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0
    assert np.float32(1e-39) * np.float32(1.0) != 0.0


@needs_kernel
@pytest.mark.parametrize("environment", [{"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"}])
def test_fewer_openmp_threads_than_asked(environment, tmp_path):
    """OpenMP may run a smaller team than torch.get_num_threads(): results stay right."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "team.py"
    script.write_text(
        "import torch\n"
        "torch.set_num_threads(4)\n"
        "from tests.layers.test_fused_cgconv import sorted_banded_graph\n"
        "from tests.layers.test_cgconv import naive_cgconv, pair\n"
        "from crystaltwins.layers import fused_cgconv\n"
        "from crystaltwins.layers.cgcnn_conv import EdgeGraph\n"
        "assert fused_cgconv.available()\n"
        "ours, naive = pair()\n"
        "a, ef, ei, band = sorted_banded_graph(n_atoms=200)\n"
        "x1, x2 = a.clone().requires_grad_(), a.clone().requires_grad_()\n"
        "out1 = ours(x1, ef, ei, EdgeGraph(ef, ei, 200, edge_band=band))\n"
        "out2 = naive_cgconv(naive, x2, ef, ei)\n"
        "out1.sum().backward(); out2.sum().backward()\n"
        "torch.testing.assert_close(out1, out2, atol=1e-4, rtol=1e-4)\n"
        "torch.testing.assert_close(x1.grad, x2.grad, atol=1e-3, rtol=1e-3)\n"
        "print('ok')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, **environment, "PYTHONPATH": str(repo), fused_cgconv.ENV_SWITCH: "1"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_kernel
def test_inputs_the_kernel_cannot_take_use_the_pytorch_path(monkeypatch):
    """int32 indices, autocast, out-of-range indices and a graph of other atoms never reach the
    kernel (which reads raw memory): the PyTorch implementation computes or reports them."""
    conv, naive = pair()
    atom_fea, edge_fea, edge_index, band = sorted_banded_graph()
    calls = count_fused_calls(monkeypatch)
    expected = naive_cgconv(naive, atom_fea, edge_fea, edge_index)

    int32 = edge_index.int()
    graph = EdgeGraph(edge_fea, int32, 30, edge_band=band)
    assert graph.fused_offsets is None
    graph = EdgeGraph(edge_fea, edge_index, 30, edge_band=(band[0].int(), band[1]))
    assert graph.fused_offsets is None
    torch.testing.assert_close(conv(atom_fea, edge_fea, edge_index, graph), expected)

    graph = EdgeGraph(edge_fea, edge_index, 30, edge_band=band)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(atom_fea, edge_fea, edge_index, graph)

    bad = edge_index.clone()
    bad[1, 5] = 30  # no such atom
    with pytest.raises(ValueError, match="edge_index holds atom 30, outside 0..29"):
        EdgeGraph(edge_fea, bad, 30, edge_band=band)
    with pytest.raises(ValueError, match="edge_index holds atom 30"):
        conv(atom_fea, edge_fea, bad)  # the graph made inside the layer is checked too
    bad_band = band[0].clone()
    bad_band[3, 0] = edge_fea.shape[1]
    with pytest.raises(ValueError, match="edge_band index 41 outside the 41 edge features"):
        EdgeGraph(edge_fea, edge_index, 30, edge_band=(bad_band, band[1]))

    fewer_atoms = atom_fea[:29]  # a graph of other atoms than these
    with pytest.raises(RuntimeError):
        conv(fewer_atoms, edge_fea, edge_index, EdgeGraph(edge_fea, edge_index, 30, edge_band=band))
    assert calls == []
    with pytest.raises(ValueError, match="band index must be torch.int64"):
        fused_cgconv.FusedGatedConvolution.apply(
            *(torch.zeros(30, 32) for _ in range(2)),
            torch.zeros(32, 41),
            torch.ones(32),
            torch.zeros(32),
            (band[0].int(), band[1]),
            edge_index[1],
            torch.zeros(31, dtype=torch.long),
            1e-5,
        )


@needs_kernel
@pytest.mark.parametrize("faster", [True, False])
def test_auto_takes_the_kernel_where_it_was_measured_faster(monkeypatch, fresh_library, faster):
    """By default training takes the kernel only where the remembered measurement says it is the
    faster implementation on this machine at this thread count."""
    monkeypatch.setenv(fused_cgconv.ENV_SWITCH, "auto")
    threads = torch.get_num_threads()
    timings = {"fused_ms": 1.0 if faster else 3.0, "torch_ms": 2.0}
    here = {"torch": torch.__version__, "cpu": fused_cgconv.cpu_model()}
    fused_cgconv.remember_choice(threads, {"fused": faster, **timings, **here})
    calls = count_fused_calls(monkeypatch, force=False)
    conv, naive = pair()
    atom_fea, edge_fea, edge_index, band = sorted_banded_graph()
    graph = EdgeGraph(edge_fea, edge_index, 30, edge_band=band)
    torch.testing.assert_close(
        conv(atom_fea, edge_fea, edge_index, graph),
        naive_cgconv(naive, atom_fea, edge_fea, edge_index),
        atol=1e-5,
        rtol=1e-5,
    )
    assert len(calls) == (1 if faster else 0)
    with fused_cgconv.forced():  # what the measurement and the kernel tests use
        conv(atom_fea, edge_fea, edge_index, graph)
    assert len(calls) == (2 if faster else 1)


@needs_kernel
def test_the_measurement_is_made_once_and_remembered(monkeypatch, fresh_library):
    monkeypatch.setenv(fused_cgconv.ENV_SWITCH, "auto")
    threads = torch.get_num_threads()
    assert fused_cgconv.remembered_choice(threads) is None
    state = torch.get_rng_state()
    calls = count_fused_calls(monkeypatch, force=False)
    with torch.inference_mode():  # as a first training-mode forward might run
        chosen = cgcnn_conv.fused_kernel_pays()
    assert calls  # the "fused" timings did run the kernel
    assert torch.equal(torch.get_rng_state(), state)  # seeded runs are not disturbed
    choice = fused_cgconv.remembered_choice(threads)
    assert choice is not None and choice["fused"] is chosen and choice["threads"] == threads
    assert choice["fused_ms"] > 0 and choice["torch_ms"] > 0
    assert chosen == (choice["fused_ms"] < choice["torch_ms"])
    files = list((fresh_library / "kernels").glob(f"*.choice-{threads}-threads.json"))
    assert len(files) == 1

    measured_again = []

    def another_measurement(*args, **kwargs):
        measured_again.append(1)
        return {**choice, "fused": not chosen}

    monkeypatch.setattr(cgcnn_conv, "measure_kernel_choice", another_measurement)
    cgcnn_conv._measured_choice.cache_clear()  # a new process: the file answers
    assert cgcnn_conv.fused_kernel_pays() is chosen
    assert not measured_again
    stale = {**choice, "torch": "0.0"}  # another torch (or CPU model): measured again
    for content in ("{not json", json.dumps(stale)):  # a damaged file likewise, not an error
        files[0].write_text(content)
        cgcnn_conv._measured_choice.cache_clear()
        assert cgcnn_conv.fused_kernel_pays() is (not chosen)
    assert len(measured_again) == 2
    measured_again.clear()
    monkeypatch.setenv(fused_cgconv.ENV_SWITCH, "1")  # forced: no measurement at all
    cgcnn_conv._measured_choice.cache_clear()
    files[0].unlink()
    assert cgcnn_conv.fused_kernel_pays()
    assert not measured_again


@needs_kernel
def test_a_failed_measurement_keeps_the_pytorch_path(monkeypatch, fresh_library, caplog):
    monkeypatch.setenv(fused_cgconv.ENV_SWITCH, "auto")

    def failing(*args, **kwargs):
        raise RuntimeError("timer broke")

    monkeypatch.setattr(cgcnn_conv, "measure_kernel_choice", failing)
    assert cgcnn_conv.fused_kernel_pays() is False
    assert "timer broke" in caplog.text
    assert fused_cgconv.remembered_choice(torch.get_num_threads()) is None  # nothing kept
