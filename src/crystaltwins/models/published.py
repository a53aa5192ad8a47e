"""Loading the published Crystal Twins weights (``CGCNNBarlow_model.pth``, ``CGCNNSimSiam_model.pth``).

The published files are plain ``state_dict`` s of the Crystal Twins ``CrystalGraphConvNet``
(``embedding``, ``convs.N.{fc_full,bn1,bn2}``, ``conv_to_fc``, ``fc_head.{0,2}``). They are read
with ``torch.load(weights_only=True)``: no object is ever unpickled.

The weights only mean something with the element encoding they were trained with, CGCNN's
``atom_init.json`` (92 features, elements 1-100). :func:`load_published_crystal_twins` therefore
checks the table it is given, against a reference ``atom_init.json`` when a path is given and
against :data:`PUBLISHED_ATOM_INIT_FINGERPRINT` (the fingerprint of that file) by default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crystaltwins.models.cgcnn import CONV_KEY, CGCNNEncoder
from crystaltwins.models.heads import ProjectionHead

#: :func:`atom_features_fingerprint` of the table built from the Crystal Twins / CGCNN
#: ``atom_init.json`` (rows 0-100, 92 features).
PUBLISHED_ATOM_INIT_FINGERPRINT = "f59721d3cc872e8691a13b1432cf68125a0bb50c0a417a44c5d0e4a85c58781b"
#: Largest Z in the published ``atom_init.json``.
PUBLISHED_MAX_Z = 100

_HEAD_PREFIX = "fc_head."


def read_atom_init_table(path: str | Path) -> Tensor:
    """Read a CGCNN ``atom_init.json`` into a feature table.

    :param path: the JSON file, ``{"Z": [features...]}``.
    :returns: ``(max_Z + 1, n_features)`` float32, row Z the features of element Z, rows of
        elements not in the file (and row 0) zeros.
    """
    path = Path(path)
    with path.open() as handle:
        raw = json.load(handle)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a JSON object mapping atomic numbers to feature lists")
    rows = {int(z): np.asarray(v, dtype=np.float64) for z, v in raw.items()}
    widths = {v.shape for v in rows.values()}
    if len(widths) != 1 or len(next(iter(widths))) != 1 or min(rows) < 1:
        raise ValueError(f"{path}: feature vectors must be 1-D, of equal length, keyed by Z >= 1")
    table = np.zeros((max(rows) + 1, next(iter(widths))[0]), dtype=np.float32)
    for z, v in rows.items():
        table[z] = v
    return torch.from_numpy(table)


def atom_features_fingerprint(atom_features: Tensor, max_z: int = PUBLISHED_MAX_Z) -> str:
    """SHA-256 of the rows ``0..max_z`` of an element-feature table (values rounded to 1e-6).

    :param atom_features: ``(n_z, n_features)`` table with ``n_z > max_z``.
    :param max_z: last row included.
    :returns: hex digest, also covering the table's shape.
    """
    table = torch.as_tensor(atom_features).detach().cpu().to(torch.float64).numpy()
    if table.ndim != 2 or table.shape[0] <= max_z:
        raise ValueError(
            f"atom_features of shape {table.shape} has no row for Z = {max_z}: cannot fingerprint"
        )
    rows = np.round(table[: max_z + 1], 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    digest = hashlib.sha256(f"{rows.shape[0]}x{rows.shape[1]};".encode())
    digest.update(np.ascontiguousarray(rows, dtype="<f8").tobytes())
    return digest.hexdigest()


def check_atom_features(
    atom_features: Tensor,
    *,
    atom_init_path: str | Path | None = None,
    expected_fingerprint: str | None = None,
    source: str = "the published weights",
    atol: float = 1e-6,
) -> None:
    """Check that an element-feature table is the encoding a model was trained with.

    :param atom_features: ``(n_z, n_features)`` table, row Z element Z.
    :param atom_init_path: reference ``atom_init.json``; every element in it must have the same
        features in ``atom_features`` (rows beyond the file's elements are not checked).
    :param expected_fingerprint: expected :func:`atom_features_fingerprint` of rows
        ``0..100``; ``None`` to skip.
    :param source: what the encoding is needed for (for the error message).
    :param atol: tolerance of the comparison with ``atom_init_path``.
    :raises ValueError: if the table differs.
    """
    table = torch.as_tensor(atom_features, dtype=torch.float32).detach().cpu()
    if atom_init_path is not None:
        reference = read_atom_init_table(atom_init_path)
        if table.ndim != 2 or table.shape[1] != reference.shape[1]:
            raise ValueError(
                f"atom_features has shape {tuple(table.shape)} but {atom_init_path} has "
                f"{reference.shape[1]} features per element: {source} need that encoding"
            )
        if table.shape[0] < reference.shape[0]:
            raise ValueError(
                f"atom_features has rows for Z <= {table.shape[0] - 1} only but {atom_init_path} "
                f"covers Z <= {reference.shape[0] - 1}"
            )
        ref_rows = reference.abs().sum(dim=1) > 0
        ref_rows[0] = True
        bad = torch.nonzero(
            ref_rows & ~torch.isclose(table[: reference.shape[0]], reference, atol=atol).all(1)
        ).flatten()
        if bad.numel():
            raise ValueError(
                f"atom_features differ from {atom_init_path} for Z = {bad.tolist()[:20]}"
                f"{' ...' if bad.numel() > 20 else ''}: {source} were trained with that "
                "element encoding; build the table from that file"
            )
    if expected_fingerprint is not None:
        try:
            found = atom_features_fingerprint(table)
        except ValueError as err:
            raise ValueError(f"{err}; {source} need CGCNN's atom_init.json encoding") from err
        if found != expected_fingerprint:
            raise ValueError(
                f"atom_features fingerprint {found[:16]}... differs from the expected "
                f"{expected_fingerprint[:16]}...: {source} were trained with CGCNN's "
                "atom_init.json element encoding (92 features, Z = 1..100). Build the table "
                "from that file, or pass expected_fingerprint=None to skip this check."
            )


def _is_dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s storage holds every value its shape claims (not a stride-0 view)."""
    stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    return tensor.is_contiguous() and tensor.storage_offset() + tensor.numel() <= stored


#: The widest atom features and the most convolutions read from a published state dict.
MAX_PUBLISHED_WIDTH = 1024
MAX_PUBLISHED_CONVS = 16


def _infer_dims(state: Mapping[str, Tensor], path: Path) -> dict[str, Any]:
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ValueError(f"{path}: missing key {key!r}; not a Crystal Twins CGCNN state dict")
        return tuple(state[key].shape)

    if not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path}: not a Crystal Twins CGCNN state dict (a key is no name)")
    emb = shape("embedding.weight")
    fc = shape("conv_to_fc.weight")
    head0 = shape(_HEAD_PREFIX + "0.weight")
    head2 = shape(_HEAD_PREFIX + "2.weight")
    if len(emb) != 2 or len(fc) != 2 or len(head0) != 2 or len(head2) != 2:
        raise ValueError(f"{path}: embedding/conv_to_fc/fc_head weights must be matrices")
    conv_ids = sorted({int(m.group(1)) for k in state if (m := CONV_KEY.match(k))})
    if conv_ids != list(range(len(conv_ids))):
        raise ValueError(f"{path}: convolution indices {conv_ids} are not 0..n-1")
    atom_fea_len, n_features = emb
    # sized by key names and shapes alone before the weights are loaded: within what any
    # published CGCNN could be (CT's: 64 wide, 3 convolutions)
    if atom_fea_len > MAX_PUBLISHED_WIDTH or len(conv_ids) > MAX_PUBLISHED_CONVS:
        raise ValueError(
            f"{path}: a CGCNN state dict of {atom_fea_len}-wide atoms and {len(conv_ids)} "
            f"convolutions (at most {MAX_PUBLISHED_WIDTH} and {MAX_PUBLISHED_CONVS} read)"
        )
    nbr_fea_len = None
    if conv_ids:
        fc_full = shape("convs.0.fc_full.weight")
        nbr_fea_len = fc_full[1] - 2 * atom_fea_len
    return {
        "atom_fea_len": atom_fea_len,
        "n_features": n_features,
        "n_conv": len(conv_ids),
        "nbr_fea_len": nbr_fea_len,
        "h_fea_len": fc[0],
        "head_hidden": head0[0],
        "head_out": head2[0],
    }


def _strict_load(
    module: torch.nn.Module, state: Mapping[str, Tensor], path: Path, what: str, prefix: str = ""
) -> None:
    """``load_state_dict(strict=True)``, raising a ValueError that names every bad key."""
    own = module.state_dict()
    missing = sorted(prefix + k for k in set(own) - set(state))
    unexpected = sorted(prefix + k for k in set(state) - set(own))
    mis_shaped = sorted(
        f"{prefix}{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mis_shaped:
        problems.append(f"mis-shaped keys {mis_shaped}")
    if problems:
        raise ValueError(f"{path}: cannot load the {what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def load_published_crystal_twins(
    path: str | Path,
    atom_features: Tensor,
    *,
    atom_init_path: str | Path | None = None,
    expected_fingerprint: str | None = PUBLISHED_ATOM_INIT_FINGERPRINT,
    gaussian: Mapping[str, float | None] | None = None,
) -> tuple[CGCNNEncoder, ProjectionHead]:
    """Load a published Crystal Twins checkpoint into an encoder and its ``fc_head``.

    All dimensions are read from the tensor shapes; every key must map (strict loading).
    For ``CGCNNBarlow_model.pth`` the head is the Barlow Twins projector (128 → 128 → 256);
    for ``CGCNNSimSiam_model.pth`` it is the SimSiam *predictor* of the Crystal Twins code
    (256 → 256 → 256, applied to the encoder output and compared with the stop-gradient encoder
    output); load it into :class:`~crystaltwins.losses.SimSiamLoss` with ``predictor=head``.

    Both models are returned in training mode, on the CPU.

    :param path: the ``.pth`` file (a plain state dict).
    :param atom_features: ``(n_z, 92)`` element-feature table (row Z element Z, row 0 zeros); it
        must be CGCNN's ``atom_init.json`` encoding.
    :param atom_init_path: reference ``atom_init.json`` to compare ``atom_features`` with.
    :param expected_fingerprint: expected :func:`atom_features_fingerprint` of the table;
        defaults to that of the published ``atom_init.json``; ``None`` skips the check.
    :param gaussian: distance expansion; defaults to the published one (0-8 Å, step 0.2).
    :returns: ``(encoder, head)``.
    :raises ValueError: on any missing, unexpected or mis-shaped key, or on an element
        encoding that differs from the one of the weights.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a plain state dict of tensors")
    hollow = sorted(str(k) for k, v in state.items() if not _is_dense(v))
    if hollow:  # e.g. stride-0 views: huge shapes over a few stored numbers, sizing the model
        raise ValueError(f"{path}: {hollow[0]} is not a dense tensor of the values it claims")
    dims = _infer_dims(state, path)
    broken = sorted(
        str(k)
        for k, v in state.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    )
    if broken:  # a damaged or diverged file: NaN embeddings, predictions or fine-tuning
        raise ValueError(f"{path}: {broken[0]} holds non-finite values (NaN or inf)")

    table = torch.as_tensor(atom_features, dtype=torch.float32)
    if table.ndim != 2 or table.shape[1] != dims["n_features"]:
        raise ValueError(
            f"{path}: the weights expect {dims['n_features']} element features but "
            f"atom_features has shape {tuple(table.shape)}"
        )
    check_atom_features(
        table,
        atom_init_path=atom_init_path,
        expected_fingerprint=expected_fingerprint,
        source=f"the weights in {path.name}",
    )

    encoder = CGCNNEncoder(
        table,
        atom_fea_len=dims["atom_fea_len"],
        n_conv=dims["n_conv"],
        h_fea_len=dims["h_fea_len"],
        gaussian=gaussian,
    )
    if dims["nbr_fea_len"] is not None and dims["nbr_fea_len"] != encoder.gaussian.num_features:
        raise ValueError(
            f"{path}: the convolutions expect {dims['nbr_fea_len']} edge features but the "
            f"Gaussian expansion {encoder.config['gaussian']} gives "
            f"{encoder.gaussian.num_features}"
        )
    head = ProjectionHead(dims["h_fea_len"], dims["head_hidden"], dims["head_out"])

    head_state = {k[len(_HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(_HEAD_PREFIX)}
    encoder_state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIX)}
    _strict_load(encoder, encoder_state, path, "encoder")
    _strict_load(head, head_state, path, "fc_head", prefix=_HEAD_PREFIX)
    return encoder, head
