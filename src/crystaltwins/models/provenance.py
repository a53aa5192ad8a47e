"""Which crystals' labels a fine-tuned model learned from, kept in its model file.

A fine-tuned model file records a hash of the id of every crystal whose label it used (its
training crystals, and its validation crystals, which chose its best epoch), under
:data:`LABELLED_KEY` of its ``info``: a sorted ``(M,)`` int64 tensor, 8 bytes per crystal, no
ids in the clear. A later run that starts from that model on the same data file can then count
exactly which of its own validation and test crystals the starting model saw labelled (their
MAE is optimistic), instead of warning that some may have been.

The hash is the first 8 bytes of BLAKE2b of the id's UTF-8 text: two different ids share one
with probability ~M²/2⁶⁴ (below 1e-9 for a million crystals).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: Entry of a fine-tuned model file's ``info``: hashes of the ids of its labelled crystals.
LABELLED_KEY = "labelled_id_hashes"


def _hashes(ids: Iterable[Any]) -> np.ndarray:
    """``(M,)`` int64: the hash of each of ``ids`` (taken as ``str``), in their order."""
    digests = b"".join(hashlib.blake2b(str(i).encode(), digest_size=8).digest() for i in ids)
    return np.frombuffer(digests, dtype="<i8").astype(np.int64)


def id_hashes(ids: Iterable[Any]) -> np.ndarray:
    """``(M,)`` int64, sorted and unique: the hashes of ``ids`` (each taken as ``str``)."""
    return np.unique(_hashes(ids))


def labelled_record(ids: Iterable[Any]) -> Tensor:
    """The :data:`LABELLED_KEY` entry for a model trained on the labels of ``ids``."""
    return torch.from_numpy(id_hashes(ids).copy())


def labelled_hashes(info: Mapping[str, Any]) -> np.ndarray | None:
    """The hashes a model file's ``info`` records (checked when the file was loaded), or
    ``None`` when it records none (a pre-trained model, or a file written before they were)."""
    record = info.get(LABELLED_KEY)
    if not isinstance(record, Tensor):
        return None
    return record.numpy()


def seen_ids(info: Mapping[str, Any], ids: Iterable[Any]) -> list[str] | None:
    """Those of ``ids`` whose labels the model of ``info`` learned from (in the order given),
    or ``None`` when its file does not record them."""
    known = labelled_hashes(info)
    if known is None:
        return None
    ids = [str(i) for i in ids]
    hits = np.isin(_hashes(ids), known)
    return [i for i, hit in zip(ids, hits, strict=True) if hit]


def check_labelled_record(record: Any) -> str | None:
    """What is wrong with a model file's :data:`LABELLED_KEY` entry, or ``None``."""
    if not isinstance(record, Tensor):
        return f"is {type(record).__name__}, expected a tensor"
    if record.dtype != torch.int64 or record.dim() != 1:
        return f"is a {record.dim()}-d {record.dtype} tensor, expected 1-d int64"
    if record.layout != torch.strided or not record.is_contiguous():
        return "is not a dense tensor"
    stored = record.untyped_storage().nbytes() // record.element_size()
    if record.storage_offset() + record.numel() > stored:
        return "is not a dense tensor of the values it claims"
    if record.numel() > 1 and not bool((record[1:] > record[:-1]).all()):
        return "is not sorted and unique"
    return None
