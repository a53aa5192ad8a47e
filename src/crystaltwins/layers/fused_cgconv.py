"""Fused CPU kernel for the training-mode edge work of :class:`~crystaltwins.layers.CGConv`.

In training, a convolution's per-edge work (the split ``fc_full`` map, the edge BatchNorm with
batch statistics, the sigmoid × softplus gate and the sum over each atom's edges, and all their
gradients) is memory-bound when done as separate PyTorch operations: every operation reads and
writes ``(E, 2A)`` tensors again. ``csrc/cgconv_fused.cpp`` does it in 2 passes over the edges
forward and 1 backward, parallel over atoms with OpenMP, and stores nothing per edge in between
(the backward recomputes each edge's value and gate from the ``(N, 2A)`` inputs).

The C++ source ships with the package and is compiled on first use with the system's C++
compiler (``$CXX``, else ``c++``) into ``$CRYSTALTWINS_CACHE/kernels`` (default
``~/.cache/crystaltwins/kernels``), for the CPU it runs on; the library is loaded with
:mod:`ctypes` (no Python headers or PyTorch build needed). Without a compiler with OpenMP, or
with ``CRYSTALTWINS_FUSED_KERNELS=0``, the convolution uses its PyTorch implementation, which
computes the same function (to float32 rounding).

Whether the kernel is faster depends on the CPU: 1.1-1.45x faster than the PyTorch operations
on an Intel Xeon with AVX-512, 2-3x slower on an AMD EPYC (Zen 1) VM (``docs/benchmarks.md``).
So by default (``CRYSTALTWINS_FUSED_KERNELS=auto``) training takes it only where it was measured
faster on this machine at this thread count: once, by
:func:`crystaltwins.layers.cgcnn_conv.measure_kernel_choice`, remembered beside the library
(:func:`remembered_choice`). ``CRYSTALTWINS_FUSED_KERNELS=1`` always takes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("csrc") / "cgconv_fused.cpp"
ABI_VERSION = 3
ENV_SWITCH = "CRYSTALTWINS_FUSED_KERNELS"

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_disabled_depth = 0
_forced_depth = 0
_library_file: Path | None = None  # the file load_library loaded


def mode() -> str:
    """``$CRYSTALTWINS_FUSED_KERNELS``: ``"off"`` (``0``, ``false``, ``no``, ``off``), ``"on"``
    (``1``, ``true``, ``yes``, ``on``: always the kernel) or ``"auto"`` (the default: the kernel
    where it was measured faster, see the module docstring)."""
    value = os.environ.get(ENV_SWITCH, "auto").strip().lower()
    if value in {"0", "false", "no", "off"}:
        return "off"
    return "on" if value in {"1", "true", "yes", "on"} else "auto"


def kernel_cache_dir() -> Path:
    """Folder of the compiled kernels: ``$CRYSTALTWINS_CACHE/kernels``."""
    root = os.environ.get("CRYSTALTWINS_CACHE", Path.home() / ".cache" / "crystaltwins")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What the compiled code depends on besides the compiler: OS, C library, architecture and
    instruction-set flags (``-march=native``), so that a cache folder shared between machines
    never hands one a library built for another."""
    parts = [sys.platform, platform.machine(), "-".join(platform.libc_ver())]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            parts += [line for line in f if line.startswith(("flags", "Features"))][:1]
    except OSError:
        parts.append(platform.processor())
        if sys.platform == "darwin":
            for name in ("machdep.cpu.features", "machdep.cpu.leaf7_features", "hw.cpufamily"):
                parts.append(_output(["sysctl", "-n", name]))
    return "\n".join(parts)


def _output(command: list[str]) -> str:
    """Standard output and error of a short command, ``""`` where it cannot run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def _compile_commands(compiler: list[str], source: Path, library: Path) -> list[list[str]]:
    """Compile to an object with ``-ffast-math`` (vectorised ``exp``/``log1p``), then link
    without it: linking a shared library with ``-ffast-math`` makes GCC < 13 add start-up code
    that sets flush-to-zero for the whole process, changing every other computation in it."""
    machine = platform.machine().lower()
    native = {"x86_64": "-march=native", "amd64": "-march=native"}.get(machine)
    if machine in {"aarch64", "arm64"}:
        native = "-mcpu=native"
    flags = ["-O3", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++17", *([native] if native else [])]
    obj = library.with_suffix(".o")
    return [
        [*compiler, *flags, "-c", str(source), "-o", str(obj)],
        [*compiler, "-shared", "-fopenmp", str(obj), "-o", str(library)],
    ]


def _build(library: Path, compiler: list[str]) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = Path(tmp) / library.name
        for command in _compile_commands(compiler, SOURCE, partial):
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=300, check=False
            )
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(compiler)} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(partial, library)  # atomic: concurrent processes never load a partial file


def _open(library: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(library))
    try:
        version = lib.ct_cgconv_abi_version()
    except AttributeError as exc:
        raise OSError(f"{library} is not a crystaltwins kernel library") from exc
    if version != ABI_VERSION:
        raise OSError(f"{library} has ABI version {version}, not {ABI_VERSION}")
    return lib


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; ``None`` where they cannot be had.

    A failure to build is reported once as a :class:`RuntimeWarning`.
    """
    global _library_file
    if mode() == "off":
        return None
    compiler = shlex.split(os.environ.get("CXX") or "c++")  # e.g. CXX="ccache g++"
    if not compiler or shutil.which(compiler[0]) is None:
        _warn_unavailable(f"no C++ compiler {' '.join(compiler)!r} found (set $CXX)")
        return None
    signature = [
        SOURCE.read_text(encoding="utf-8"),
        *(" ".join(c) for c in _compile_commands(compiler, Path("k.cpp"), Path("k.so"))),
        _output([*compiler, "--version"]),
        _cpu_signature(),
    ]
    key = hashlib.sha256("\0".join(signature).encode()).hexdigest()[:16]
    library = kernel_cache_dir() / f"cgconv_fused-{key}.so"
    _library_file = library
    try:
        if not library.exists():
            _build(library, compiler)
        try:
            lib = _open(library)
        except OSError:  # e.g. built against another C++ runtime: build again, once
            _build(library, compiler)
            lib = _open(library)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _warn_unavailable(str(exc))
        return None
    lib.ct_cgconv_forward.restype = None
    lib.ct_cgconv_forward.argtypes = (
        [_I64] * 4 + [_PTR] * 9 + [ctypes.c_float] + [_PTR] * 4 + [ctypes.c_int]
    )
    lib.ct_cgconv_backward.restype = None
    lib.ct_cgconv_backward.argtypes = [_I64] * 5 + [_PTR] * 19 + [ctypes.c_int]
    return lib


def _warn_unavailable(reason: str) -> None:
    warnings.warn(
        f"crystaltwins: fused CGCNN kernels unavailable, training on CPU uses the PyTorch "
        f"implementation (slower on some CPUs; set {ENV_SWITCH}=0 to silence this): {reason}",
        RuntimeWarning,
        stacklevel=3,
    )


def available() -> bool:
    """Whether the fused kernels can be used in this process (built, and not :func:`disabled`);
    training takes them where :func:`crystaltwins.layers.cgcnn_conv.fused_kernel_pays`."""
    return _disabled_depth == 0 and load_library() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Use the PyTorch implementation inside the block (for comparisons and tests)."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


@contextlib.contextmanager
def forced() -> Iterator[None]:
    """Take the kernel inside the block wherever it applies, whatever was measured (for
    measurements and tests; :func:`disabled` wins)."""
    global _forced_depth
    _forced_depth += 1
    try:
        yield
    finally:
        _forced_depth -= 1


def is_forced() -> bool:
    """Inside :func:`forced`, or ``$CRYSTALTWINS_FUSED_KERNELS`` on."""
    return _forced_depth > 0 or mode() == "on"


def _choice_file(threads: int) -> Path | None:
    if load_library() is None or _library_file is None:
        return None
    return _library_file.with_name(f"{_library_file.stem}.choice-{threads}-threads.json")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def remembered_choice(threads: int) -> dict[str, Any] | None:
    """The measurement remembered for this library at ``threads`` threads (``{"fused": bool,
    "fused_ms": ..., "torch_ms": ..., ...}``), or ``None``: none yet, unreadable, or made with
    another torch version or on another CPU model (a cache folder may be shared). Delete the
    ``cgconv_fused-*.choice-*.json`` files of ``$CRYSTALTWINS_CACHE/kernels`` to measure again
    (e.g. if the first measurement ran while the machine was busy)."""
    path = _choice_file(threads)
    try:
        choice = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    if not (isinstance(choice, dict) and isinstance(choice.get("fused"), bool)):
        return None
    if choice.get("torch") != torch.__version__ or choice.get("cpu") != cpu_model():
        return None
    return choice


def remember_choice(threads: int, choice: dict[str, Any]) -> None:
    """Keep ``choice`` beside the library (atomic; a read-only cache only loses the memory)."""
    from crystaltwins.io.atomic import write_json_atomic

    path = _choice_file(threads)
    if path is not None:
        with contextlib.suppress(OSError):
            write_json_atomic(path, choice)


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _check_inputs(
    h_i: Tensor,
    h_j: Tensor,
    w_u: Tensor,
    gamma: Tensor,
    beta: Tensor,
    band: tuple[Tensor, Tensor],
    neighbour: Tensor,
    centre_offsets: Tensor,
) -> None:
    """Dtypes, devices and shapes, since the kernel reads raw memory. Index ranges are the
    caller's duty (:attr:`EdgeGraph.fused_offsets <crystaltwins.layers.EdgeGraph.fused_offsets>`)."""
    index, value = band
    floats = {"h_i": h_i, "h_j": h_j, "w_u": w_u, "gamma": gamma, "beta": beta, "band value": value}
    longs = {"band index": index, "neighbour": neighbour, "centre_offsets": centre_offsets}
    for name, t in {**floats, **longs}.items():
        wanted = torch.float32 if name in floats else torch.long
        if t.dtype != wanted or t.device.type != "cpu":
            raise ValueError(
                f"fused CGConv kernel: {name} must be {wanted} on CPU, got {t.dtype} on {t.device}"
            )
    n, c2 = h_i.shape
    e = neighbour.shape[0]
    if (
        c2 % 2
        or h_j.shape != h_i.shape
        or w_u.ndim != 2
        or w_u.shape[0] != c2
        or gamma.shape != (c2,)
        or beta.shape != (c2,)
        or index.ndim != 2
        or index.shape != value.shape
        or index.shape[0] != e
        or neighbour.ndim != 1
        or centre_offsets.shape != (n + 1,)
        or int(centre_offsets[-1]) != e
    ):
        raise ValueError(
            "fused CGConv kernel: inconsistent shapes "
            f"h_i {tuple(h_i.shape)}, h_j {tuple(h_j.shape)}, w_u {tuple(w_u.shape)}, "
            f"gamma {tuple(gamma.shape)}, beta {tuple(beta.shape)}, band {tuple(index.shape)}/"
            f"{tuple(value.shape)}, neighbour {tuple(neighbour.shape)}, "
            f"centre_offsets {tuple(centre_offsets.shape)}"
        )


class FusedGatedConvolution(torch.autograd.Function):
    """Training-mode edge work of a CGCNN convolution, one autograd node.

    Inputs (float32, CPU, contiguous where noted):

    * ``h_i``, ``h_j`` ``(N, 2A)``: ``W_i v + b`` and ``W_j v`` per atom;
    * ``w_u`` ``(2A, K)``: the edge-feature block of ``fc_full.weight``;
    * ``gamma``, ``beta`` ``(2A,)``: ``bn1``'s affine parameters;
    * ``band``: ``(index, value)`` ``(E, W)`` edge features, as :meth:`GaussianExpansion.banded`;
    * ``neighbour`` ``(E,)`` int64 and ``centre_offsets`` ``(N + 1,)`` int64: edges grouped by
      centre atom, those of atom ``i`` at ``centre_offsets[i]:centre_offsets[i + 1]``.

    Returns ``(summed, mean, var)``: ``(N, A)`` gated sums over each atom's edges and the
    ``(2A,)`` batch mean and biased variance of the edge map (for the running statistics).
    """

    @staticmethod
    def forward(
        ctx: Any,
        h_i: Tensor,
        h_j: Tensor,
        w_u: Tensor,
        gamma: Tensor,
        beta: Tensor,
        band: tuple[Tensor, Tensor],
        neighbour: Tensor,
        centre_offsets: Tensor,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        lib = load_library()
        if lib is None:
            raise RuntimeError("the fused CGCNN kernels are not available (see available())")
        _check_inputs(h_i, h_j, w_u, gamma, beta, band, neighbour, centre_offsets)
        h_i, h_j = h_i.contiguous(), h_j.contiguous()
        w_ut = w_u.t().contiguous()  # (K, 2A)
        gamma, beta = gamma.contiguous(), beta.contiguous()
        index, value = band
        index, value = index.contiguous(), value.detach().contiguous()
        neighbour, centre_offsets = neighbour.contiguous(), centre_offsets.contiguous()
        n, c2 = h_i.shape
        c = c2 // 2
        e, width = index.shape
        summed = h_i.new_empty(n, c)
        mean, var = h_i.new_empty(c2), h_i.new_empty(c2)
        atom_sums = h_i.new_empty(n, 2 * c2)  # the backward's BatchNorm sums, per atom
        lib.ct_cgconv_forward(
            n, e, c, width,
            _ptr(h_i), _ptr(h_j), _ptr(w_ut), _ptr(index), _ptr(value), _ptr(neighbour),
            _ptr(centre_offsets), _ptr(gamma), _ptr(beta), float(eps),
            _ptr(summed), _ptr(mean), _ptr(var), _ptr(atom_sums), torch.get_num_threads(),
        )  # fmt: skip
        inv_std = torch.rsqrt(var + eps)
        ctx.save_for_backward(
            h_i, h_j, w_ut, gamma, beta, mean.clone(), inv_std, atom_sums,
            index, value, neighbour, centre_offsets,
        )  # fmt: skip
        ctx.num_features = w_ut.shape[0]
        ctx.mark_non_differentiable(mean, var)
        return summed, mean, var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_summed: Tensor, _grad_mean: Any, _grad_var: Any
    ) -> tuple[Tensor | None, ...]:
        lib = load_library()
        (h_i, h_j, w_ut, gamma, beta, mean, inv_std, atom_sums, index, value, neighbour,
         offsets) = ctx.saved_tensors  # fmt: skip
        grad = grad_summed.contiguous()
        n, c = grad.shape
        e, width = index.shape
        k = ctx.num_features
        threads = torch.get_num_threads()
        grad_h_i, grad_h_j = h_i.new_empty(n, 2 * c), h_i.new_empty(n, 2 * c)
        grad_w_ut = h_i.new_empty(k, 2 * c)
        grad_gamma, grad_beta = h_i.new_empty(2 * c), h_i.new_empty(2 * c)
        scratch = h_i.new_empty(threads * (n + k) * 2 * c)
        lib.ct_cgconv_backward(
            n, e, c, k, width,
            _ptr(grad), _ptr(h_i), _ptr(h_j), _ptr(w_ut), _ptr(gamma), _ptr(beta), _ptr(mean),
            _ptr(inv_std), _ptr(atom_sums), _ptr(index), _ptr(value), _ptr(neighbour),
            _ptr(offsets), _ptr(grad_h_i), _ptr(grad_h_j), _ptr(grad_w_ut), _ptr(grad_gamma),
            _ptr(grad_beta), _ptr(scratch), threads,
        )  # fmt: skip
        return grad_h_i, grad_h_j, grad_w_ut.t(), grad_gamma, grad_beta, None, None, None, None
