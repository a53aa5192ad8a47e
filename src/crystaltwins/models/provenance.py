"""Which crystals' labels a fine-tuned model learned from, kept in its model file.

A fine-tuned model file records a hash of the id of every crystal whose label it used (its
training crystals, and its validation crystals, which chose its best epoch), under
:data:`LABELLED_KEY` of its ``info``: a sorted ``(M,)`` int64 tensor, 8 bytes per crystal, no
ids in the clear. A later run that starts from that model on the same data file can then count
exactly which of its own validation and test crystals the starting model saw labelled (their
MAE is optimistic), instead of warning that some may have been. A model fine-tuned from another
also carries the records of the models it started from (:data:`EARLIER_KEY`, each with its data
file's name), so a chain (A on file X, B from A on file Y, C from B on X) is still checked.
Records are matched to a run's data by file name up to its first dot (``mp36k.csv.gz``,
``mp36k.csv`` and a graph cache folder ``mp36k`` match).

The hash is the first 8 bytes of BLAKE2b of the id's UTF-8 text: two different ids share one
with probability ~M²/2⁶⁴ (below 1e-9 for a million crystals).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crystaltwins.models.published import _is_dense

#: Entry of a fine-tuned model file's ``info``: hashes of the ids of its labelled crystals
#: (crystals of its ``info["data_source"]``).
LABELLED_KEY = "labelled_id_hashes"
#: Entry of a fine-tuned model file's ``info``: the records of the models it started from, a
#: list of ``{"data_source": file name, LABELLED_KEY: hashes}``.
EARLIER_KEY = "labelled_earlier"
#: Most earlier records a file may carry.
MAX_EARLIER = 100


def source_key(path: Any) -> str:
    """What a data file is matched by: its name up to the first dot."""
    return Path(str(path)).name.split(".")[0]


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


def _records(info: Mapping[str, Any]) -> list[tuple[str, Tensor]]:
    """``(data file, hashes)`` of every record in ``info`` (checked when the file was loaded):
    its own, then those of the models it started from."""
    found = []
    own = info.get(LABELLED_KEY)
    if isinstance(own, Tensor) and info.get("data_source"):
        found.append((str(info["data_source"]), own))
    for earlier in info.get(EARLIER_KEY) or []:
        found.append((str(earlier["data_source"]), earlier[LABELLED_KEY]))
    return found


def labelled_hashes(info: Mapping[str, Any], data: Any = None) -> np.ndarray | None:
    """The hashes of the crystals of ``data`` (a data file; default: the model's own) whose
    labels the model of ``info`` or a model it started from learned; ``None`` when its file
    records none for that file (a pre-trained model, or a file written before records were)."""
    key = source_key(data if data is not None else info.get("data_source", ""))
    matching = [record.numpy() for source, record in _records(info) if source_key(source) == key]
    if not matching:
        return None
    return matching[0] if len(matching) == 1 else np.unique(np.concatenate(matching))


def earlier_records(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The :data:`EARLIER_KEY` entry of a model fine-tuned from the model of ``info``."""
    found = [{"data_source": source_key(s), LABELLED_KEY: r} for s, r in _records(info)]
    return found[:MAX_EARLIER]


def seen_ids(info: Mapping[str, Any], ids: Iterable[Any], data: Any) -> list[str] | None:
    """Those of ``ids`` (crystals of the data file ``data``) whose labels the model of ``info``
    or a model it started from learned, in the order given; ``None`` when its file records
    nothing for that data file."""
    known = labelled_hashes(info, data)
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
    if record.layout != torch.strided or not _is_dense(record):
        return "is not a dense tensor of the values it claims"
    if record.numel() > 1 and not bool((record[1:] > record[:-1]).all()):
        return "is not sorted and unique"
    return None


def check_provenance(info: Mapping[str, Any]) -> str | None:
    """What is wrong with a model file's records (:data:`LABELLED_KEY`, :data:`EARLIER_KEY`)
    as ``"info.<entry> ..."``, or ``None``."""
    if LABELLED_KEY in info:
        problem = check_labelled_record(info[LABELLED_KEY])
        if problem:
            return f"info.{LABELLED_KEY} {problem}"
    if EARLIER_KEY not in info:
        return None
    earlier = info[EARLIER_KEY]
    if not isinstance(earlier, list) or len(earlier) > MAX_EARLIER:
        return f"info.{EARLIER_KEY} is not a list of at most {MAX_EARLIER} records"
    for k, entry in enumerate(earlier):
        if not isinstance(entry, Mapping) or set(entry) != {"data_source", LABELLED_KEY}:
            return f"info.{EARLIER_KEY}[{k}] is not {{data_source, {LABELLED_KEY}}}"
        if not isinstance(entry["data_source"], str):
            return f"info.{EARLIER_KEY}[{k}].data_source is not a string"
        problem = check_labelled_record(entry[LABELLED_KEY])
        if problem:
            return f"info.{EARLIER_KEY}[{k}].{LABELLED_KEY} {problem}"
    return None
