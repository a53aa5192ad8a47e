"""A Crystal Twins pre-training epoch on the CPU, and what it means for the whole corpus.

Issue 12 asks for a pre-training epoch over the whole shared corpus (94,279 crystals) in at most
2 minutes on 2 CPU cores. This runs the real ``crystaltwins pretrain`` command (Barlow Twins, the
paper's augmentations, batch 64, the fused CPU kernel) on a random ``--crystals`` of the corpus
files, for 1 and for 3 epochs in separate runs; half the difference of the two wall times is the
time of one epoch without the start-up (reading the caches, building the model). The corpus
epoch is that scaled by the corpus's crystal count. A short run first builds or checks the graph
caches (not timed).

Run (nothing else heavy on the machine)::

    python benchmarks/bench_pretrain_epoch.py --data-root ../shared/data [--crystals 6400] \
        [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import add_data_arguments  # noqa: E402


def timed_pretrain(
    corpus: list[str], out: Path, crystals: int, epochs: int, threads: int
) -> tuple[float, str]:
    """Wall seconds and printed output of one ``crystaltwins pretrain`` run."""
    command = [
        sys.executable, "-m", "crystaltwins.cli.main", "pretrain", *corpus, "--out", str(out),
        "--max-crystals", str(crystals), "--epochs", str(epochs), "--no-progress",
        "--accelerator", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pretrain failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--crystals", type=int, default=6400)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    corpus = sorted(str(p) for p in Path(args.data_root).glob("*.csv.gz"))
    with tempfile.TemporaryDirectory() as tmp:
        timed_pretrain(corpus, Path(tmp) / "warm", 256, 1, args.threads)  # caches built or checked
        one, printed = timed_pretrain(corpus, Path(tmp) / "e1", args.crystals, 1, args.threads)
        three, _ = timed_pretrain(corpus, Path(tmp) / "e3", args.crystals, 3, args.threads)
    total = sum(int(n) for n in re.findall(r"(\d+) crystals \((?:reused|built)", printed))
    epoch = (three - one) / 2
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {args.threads} threads, {args.crystals} of "
        f"{total} corpus crystals: 1 epoch {one:.1f} s, 3 epochs {three:.1f} s of wall time; "
        f"one epoch {epoch:.1f} s → the whole corpus ≈ {epoch * total / args.crystals / 60:.1f} min "
        "per epoch"
    )


if __name__ == "__main__":
    main()
