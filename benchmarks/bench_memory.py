"""Peak memory of the real commands (issue 12): fine-tuning on mp36k, pre-training over the corpus.

Each command runs in a child process (``crystaltwins finetune`` / ``pretrain``, as a user runs it)
whose ``/proc/PID/status`` this script samples every 50 ms (Linux only):

- ``RssAnon``: memory the process allocated itself (model, optimiser, batches, index arrays, the
  Python heap): what a whole cache copied into RAM would show up in;
- ``RssFile``: pages of mapped files it has touched: the memory-mapped graph caches and the
  libraries (torch alone maps ~0.3 GB); the kernel drops them under memory pressure;
- ``VmHWM``: the peak of the two together, as the kernel counts it.

The graph caches are built (or reused) before any measurement, so that the children only read
them; their size on disk is printed beside the peaks. Run it once before measuring on a new
machine: the first training process there also times the convolution kernel
(:func:`crystaltwins.layers.cgcnn_conv.fused_kernel_pays`). On a GPU (``--accelerator gpu``) the child
also reports ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_memory.py --data-root ../shared/data --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

CHILD = """
import json, sys
import torch
from crystaltwins.cli.main import main
code = main(sys.argv[1:])
if torch.cuda.is_available():
    peak = torch.cuda.max_memory_allocated() / 2**20
    print("BENCH_MEMORY " + json.dumps({"cuda_peak_mib": peak}), flush=True)
sys.exit(code)
"""


def _status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` that matter here (empty once it has ended)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    fields[name] = int(value.split()[0])
    except OSError:
        pass
    return fields


IMPORTS = """
import torch, lightning, crystaltwins.training.finetune, crystaltwins.training.pretrain
"""


def measure(argv: list[str], threads: int, log: Path) -> dict[str, float]:
    """Run ``crystaltwins ARGV`` in a child (``ARGV = []``: only import what the commands
    import) and return its peaks in MiB and its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD if argv else IMPORTS, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        peaks: dict[str, int] = {}
        try:
            while child.poll() is None:
                for name, kib in _status(child.pid).items():
                    peaks[name] = max(peaks.get(name, 0), kib)
                time.sleep(0.05)
        finally:
            if child.poll() is None:  # interrupted: leave no training process behind
                child.kill()
                child.wait()
    if child.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"crystaltwins {' '.join(argv)} failed:\n{tail}")
    result = {f"{name}_mib": kib / 1024 for name, kib in peaks.items()}
    result["seconds"] = time.perf_counter() - started
    for line in log.read_text().splitlines():
        if line.startswith("BENCH_MEMORY "):
            result.update(json.loads(line.removeprefix("BENCH_MEMORY ")))
    return result


def cache_mib(caches: list) -> float:
    """Size on disk of the caches' arrays, MiB."""
    return sum(p.stat().st_size for c in caches for p in c.cache_dir.glob("*.npy")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--cache-root", default=None, help="default: $CRYSTALTWINS_CACHE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument(
        "--pretrain-crystals",
        type=int,
        default=6400,
        help="pre-training: a random subset of the corpus (every cache mapped; default 6400)",
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--featurize-workers", type=int, default=1, help="to build the caches")
    parser.add_argument("--out", type=Path, default=None, help="also write results.json here")
    args = parser.parse_args()

    from crystaltwins.data.sources import prepare_caches
    from crystaltwins.graph.atom_features import AtomFeaturizer
    from crystaltwins.graph.settings import GraphSettings
    from crystaltwins.io.atomic import write_json_atomic

    mp36k = args.data_root / "mp36k.csv.gz"
    corpus = sorted(args.data_root.glob("*.csv.gz"))
    featurizer = AtomFeaturizer.builtin()  # a new model's: the caches the commands will use
    cache_root = args.cache_root
    caches = {
        "mp36k": prepare_caches(
            [mp36k], GraphSettings(), featurizer, cache_root, workers=args.featurize_workers
        ),
        "corpus": prepare_caches(
            corpus, GraphSettings(), featurizer, cache_root, workers=args.featurize_workers
        ),
    }
    common = ["--no-progress", "--accelerator", args.accelerator]
    if cache_root:
        common += ["--cache-root", str(cache_root)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {
            "imports": [],
            "mp36k, 1,000 + 1,000 + 1,000 crystals": [
                "finetune", str(mp36k), "--target", "formation_energy_per_atom",
                "--from-scratch", "--epochs", str(args.finetune_epochs), "--no-plots",
                "--max-train", "1000", "--max-eval", "1000", "--out", f"{tmp}/finetune_small",
                *common,
            ],
            "mp36k": [
                "finetune", str(mp36k), "--target", "formation_energy_per_atom",
                "--from-scratch", "--epochs", str(args.finetune_epochs), "--no-plots",
                "--out", f"{tmp}/finetune", *common,
            ],
            "corpus": [
                "pretrain", *map(str, corpus), "--epochs", "1",
                "--max-crystals", str(args.pretrain_crystals), "--out", f"{tmp}/pretrain",
                *common,
            ],
        }  # fmt: skip
        for name, argv in jobs.items():
            result = measure(argv, args.threads, Path(tmp) / f"job{len(results)}.log")
            used = caches["corpus" if name == "corpus" else "mp36k"] if argv else []
            result["cache_mib"] = cache_mib(used)
            result["crystals_in_caches"] = sum(len(c) for c in used)
            results[name] = result
            print(f"{name}: {' '.join(argv[:1])} ...", json.dumps(result, indent=None), flush=True)
    print()
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {args.threads} threads"
    )
    print("| run | crystals in its caches | caches on disk | peak RssAnon | peak RssFile | VmHWM |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['crystals_in_caches']:,} | {r['cache_mib']:.0f} MiB | "
            f"{r.get('RssAnon_mib', 0):.0f} MiB | {r.get('RssFile_mib', 0):.0f} MiB | "
            f"{r.get('VmHWM_mib', 0):.0f} MiB |"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "results.json", results)


if __name__ == "__main__":
    main()
