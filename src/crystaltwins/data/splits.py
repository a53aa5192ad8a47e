"""Train / validation / test splits: seeded random, from a column of the data, or from id files."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Split:
    """Positions (into a dataset) of the train, validation and test crystals."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def random_split(n: int, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> Split:
    """A seeded random split of ``n`` crystals into train/val/test by ``fractions``.

    Fractions are normalised; sizes are ``floor(f · n)`` for validation and test, the rest train
    (so a 95/5 pre-training split is ``(0.95, 0.05, 0)``).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(np.floor(fractions[1] / total * n))
    n_test = int(np.floor(fractions[2] / total * n))
    n_train = n - n_val - n_test
    return Split(
        np.sort(order[:n_train]),
        np.sort(order[n_train : n_train + n_val]),
        np.sort(order[n_train + n_val :]),
    )


_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


#: ``random_state`` of matbench v0.1's ``KFold`` (Dunn et al., npj Comput. Mater. 2020).
MATBENCH_SEED = 18012019


def matbench_split(
    n: int, fold: int, folds: int = 5, val_fraction: float = 0.25, seed: int = 0
) -> Split:
    """Fold ``fold`` of the matbench v0.1 protocol over ``n`` crystals in the dataset's order:
    ``KFold(n_splits=folds, shuffle=True, random_state=18012019)``; the fold's test part is its
    test set, and a seeded ``val_fraction`` of its training part is carved off for validation
    (0.25 of 80%: the 60/20/20 of the Crystal Twins paper)."""
    from sklearn.model_selection import KFold

    if not 0 <= fold < folds:
        raise ValueError(f"fold must be 0..{folds - 1}, got {fold}")
    if n < folds:
        raise ValueError(f"{n} crystals are too few for {folds} folds")
    train_val, test = list(
        KFold(n_splits=folds, shuffle=True, random_state=MATBENCH_SEED).split(np.arange(n))
    )[fold]
    order = np.random.default_rng([seed, fold]).permutation(train_val)
    n_val = int(round(val_fraction * len(order)))
    return Split(np.sort(order[n_val:]), np.sort(order[:n_val]), np.sort(test))


def split_from_labels(values: Sequence[str] | np.ndarray, source: str = "split column") -> Split:
    """A split from per-crystal names such as ``train``/``val``/``test`` (qmof's ``split`` column);
    a crystal with an empty name is in no part (the caller counts it).

    :raises ValueError: a name that is none of these."""
    names = np.array(
        [_ALIASES.get(str(v).strip().lower(), "?") if str(v).strip() else "" for v in values]
    )
    unknown = sorted({str(v) for v, n in zip(values, names, strict=True) if n == "?"})
    if unknown:
        raise ValueError(f"{source}: unknown split names {unknown[:5]} (use train, val, test)")
    return Split(*(np.flatnonzero(names == part) for part in ("train", "val", "test")))


def split_from_files(
    ids: Sequence[str] | np.ndarray,
    train: str | os.PathLike,
    val: str | os.PathLike,
    test: str | os.PathLike,
    unusable: Collection[str] = (),
    left_out: list[str] | None = None,
) -> Split:
    """A split from three text files of crystal ids (one per line; ``#`` comments allowed).

    :param unusable: ids of the data that cannot be used (unreadable, no usable label): listed,
        they are left out of the split (and added to ``left_out``), not an error.
    :raises ValueError: an id not in the data, listed twice in a file, or in two of the files."""
    position = {str(i): k for k, i in enumerate(ids)}
    unusable = set(unusable)
    parts = []
    for path in (train, val, test):
        listed = [
            line.split(",")[0].strip()
            for line in Path(path).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        twice = sorted({w for w, n in Counter(listed).items() if n > 1})
        if twice:
            raise ValueError(f"{path}: {len(twice)} ids listed more than once, e.g. {twice[:3]}")
        wanted = [w for w in listed if w in position or w not in unusable]
        if left_out is not None:
            left_out += [w for w in listed if w not in position and w in unusable]
        missing = [w for w in wanted if w not in position]
        if missing:
            raise ValueError(f"{path}: {len(missing)} ids not in the data, e.g. {missing[:3]}")
        parts.append(np.sort(np.array([position[w] for w in wanted], dtype=np.int64)))
    names = ("train", "val", "test")
    for (a, first), (b, second) in itertools.combinations(zip(names, parts, strict=True), 2):
        shared = np.intersect1d(first, second)
        if len(shared):
            example = [str(ids[k]) for k in shared[:3]]
            raise ValueError(
                f"{len(shared)} ids are in both the {a} and the {b} split file, e.g. {example}; "
                "a crystal may be in one part only"
            )
    return Split(*parts)


def cap_split(
    split: Split, seed: int, max_train: int | None = None, max_eval: int | None = None
) -> Split:
    """A seeded random subset of each part of ``split``, sorted: at most ``max_train`` training
    and ``max_eval`` validation and test positions (``None``: no cap). Used by the benchmark
    presets that train on fewer crystals."""
    train, val, test = split.train, split.val, split.test
    if max_train is not None and len(train) > max_train:
        train = np.sort(np.random.default_rng(seed).choice(train, max_train, replace=False))
    if max_eval is not None:
        rng = np.random.default_rng([seed, 1])
        val, test = (
            np.sort(rng.choice(p, max_eval, replace=False)) if len(p) > max_eval else p
            for p in (split.val, split.test)
        )
    return Split(train, val, test)


def min_crystals_for_split(fractions: Sequence[float]) -> int | None:
    """The fewest crystals for which :func:`random_split` by ``fractions`` gives every part
    (train, validation, test) at least one crystal; ``None`` if no number does (a zero
    fraction)."""
    if len(fractions) != 3 or min(fractions) <= 0:
        return None
    total = float(sum(fractions))
    n = 1
    while n < 10**7:
        n_val = int(np.floor(fractions[1] / total * n))
        n_test = int(np.floor(fractions[2] / total * n))
        if n_val >= 1 and n_test >= 1 and n - n_val - n_test >= 1:
            return n
        n += 1
    return None


def check_split(split: Split, crystals: int, how: str, needed: int | None = None) -> None:
    """Raise when a part of ``split`` is empty (nothing to train on, to select the best epoch
    on, or to report a test error on).

    :param crystals: how many crystals were split (for the message).
    :param how: how the split was made, e.g. ``"random split 0.6/0.2/0.2"``.
    :param needed: the fewest crystals that split needs (:func:`min_crystals_for_split`).
    :raises ValueError: naming the empty parts and, when known, how many crystals are needed.
    """
    sizes = split.sizes()
    empty = [name for name, size in sizes.items() if size == 0]
    if not empty:
        return
    shown = ", ".join(f"{name} {size}" for name, size in sizes.items())
    need = (
        f"; it needs at least {needed} crystals"
        if needed is not None
        else "; every part needs at least one crystal"
    )
    raise ValueError(
        f"{crystals} crystals are too few for the {how} ({shown}: {' and '.join(empty)} "
        f"empty){need}"
    )
