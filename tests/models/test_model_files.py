"""Model files that load with ``weights_only`` but are wrong, and malicious pickles: one line
naming the file, exit 2, nothing built beyond what the stored weights imply, nothing executed."""

from __future__ import annotations

import copy
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crystaltwins.cli.main import main
from crystaltwins.graph.atom_features import AtomFeaturizer
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models import cgcnn
from crystaltwins.models.cgcnn import CGCNNEncoder
from crystaltwins.models.checkpoint import ModelBundle, load_model, save_model
from crystaltwins.models.heads import PropertyHead
from crystaltwins.training.run_folder import LOCK_NAME

ATOM_FEA_LEN, H_FEA_LEN = 16, 32


def _featurizer() -> AtomFeaturizer:
    rng = np.random.default_rng(0)
    table = (rng.random((101, 92)) < 0.1).astype(np.float32)
    table[0] = 0.0
    return AtomFeaturizer(table, "random-test-table")


def _bundle(featurizer: AtomFeaturizer | None = None) -> ModelBundle:
    featurizer = featurizer or _featurizer()
    torch.manual_seed(0)
    encoder = CGCNNEncoder(
        torch.tensor(featurizer.table), atom_fea_len=ATOM_FEA_LEN, n_conv=2, h_fea_len=H_FEA_LEN
    )
    info = {
        "targets": ["y"],
        "target_transform": "none",
        "target_mean": 1.5,
        "target_std": 2.0,
        "task": "regression",
    }
    head = PropertyHead(H_FEA_LEN, 8, 1)
    return ModelBundle(encoder, head, "finetuned", featurizer, GraphSettings(), info)


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> dict[str, Any]:
    path = save_model(tmp_path_factory.mktemp("model") / "model.pt", _bundle())
    return torch.load(path, weights_only=True)


def _set(keys: str, value: Any):
    """An edit of the payload: set (``value`` not ``...``) or delete the entry at ``|``-separated
    ``keys``."""

    def edit(payload: dict[str, Any]) -> None:
        *parents, last = keys.split("|")
        node = payload
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return edit


def _widen(key: str, rows: int):
    """Replace the stored encoder tensor ``key`` with one of ``rows`` rows."""

    def edit(payload: dict[str, Any]) -> None:
        state = _encoder_state(payload)
        state[key] = torch.zeros(rows, *state[key].shape[1:])

    return edit


def _both(*edits):
    """The edits one after another."""

    def edit(payload: dict[str, Any]) -> None:
        for one in edits:
            one(payload)

    return edit


def _wider_head(outputs: int):
    """A property head of ``outputs`` outputs, its weights consistent with its init args."""

    def edit(payload: dict[str, Any]) -> None:
        head = payload["heads"]["property"]
        head["init_args"]["out_dim"] = outputs
        state = head["state"]
        state["2.weight"] = torch.zeros(outputs, state["2.weight"].shape[1])
        state["2.bias"] = torch.zeros(outputs)

    return edit


def _encoder_state(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["encoder"]["state"] if "encoder" in payload else payload["encoder_state"]


def _hollow(a: int):
    """Every stored tensor a stride-0 view (a few bytes in the file) of the shape that an
    ``a``-wide encoder would have: the shapes agree with the init args, the stored values do not."""

    def edit(payload: dict[str, Any]) -> None:
        if "encoder" in payload:
            payload["encoder"]["init_args"]["atom_fea_len"] = a
        else:
            payload["encoder_config"]["atom_fea_len"] = a
        state = _encoder_state(payload)
        k = state["convs.0.fc_full.weight"].shape[1] - 2 * ATOM_FEA_LEN  # edge features
        for key, tensor in state.items():
            if key.startswith("embedding."):
                shape = (a, *tensor.shape[1:])
            elif key.endswith("fc_full.weight"):
                shape = (2 * a, 2 * a + k)
            elif ".bn1." in key or key.endswith("fc_full.bias"):
                shape = (2 * a,)
            elif ".bn2." in key:
                shape = (a,)
            elif key == "conv_to_fc.weight":
                shape = (H_FEA_LEN, a)
            else:
                continue
            if tensor.ndim:  # not the num_batches_tracked counters
                state[key] = torch.zeros((), dtype=tensor.dtype).expand(*shape)

    return edit


def _as_format_1(payload: dict[str, Any]) -> dict[str, Any]:
    """The same model in the layout of format 1 (files of earlier versions)."""
    head = payload["heads"]["property"]
    old_names = {"property": "PropertyHead", "projection": "ProjectionHead"}
    rest = {k: payload[k] for k in ("format", "kind", "featurizer", "graph_settings", "info")}
    return {
        **rest,
        "format_version": 1,
        "encoder_config": payload["encoder"]["init_args"],
        "encoder_state": payload["encoder"]["state"],
        "head": {"type": old_names[head["type"]], **head["init_args"]},
        "head_state": head["state"],
    }


#: name: (edit of a format-2 file, words the message must contain)
FORGERIES = {
    "stride-0 weights of a 12000-wide encoder": (_hollow(12000), ["not a dense tensor"]),
    "atom_fea_len 12000": (
        _set("encoder|init_args|atom_fea_len", 12000),
        ["encoder.state['embedding.weight'] has shape (16, 92)", "(12000, 92)"],
    ),
    "h_fea_len disagrees": (
        _set("encoder|init_args|h_fea_len", 64),
        ["conv_to_fc.weight", "(32, 16)", "(64, 16)"],
    ),
    "n_conv 10 million": (
        _set("encoder|init_args|n_conv", 10_000_000),
        ["n_conv is 10000000 but the stored weights hold 2 convolutions"],
    ),
    "gaussian step tiny": (
        _set("encoder|init_args|gaussian|step", 1e-9),
        ["Gaussians (at most"],
    ),
    "gaussian width disagrees": (
        _set("encoder|init_args|gaussian|dmax", 6.0),
        ["convs.0.fc_full.weight", "(32, 73)", "(32, 63)"],
    ),
    "unknown init arg": (
        _set("encoder|init_args|bogus", 1),
        ["encoder.init_args has unknown key"],
    ),
    "unknown encoder type": (_set("encoder|type", "os.system"), ["unknown encoder 'os.system'"]),
    "encoder version newer": (_set("encoder|version", 7), ["cgcnn version 7, newer"]),
    "encoder entry missing": (_set("encoder|version", ...), ["encoder lacks version"]),
    "unknown top-level entry": (_set("extra", [1, 2]), ["unknown key 'extra'"]),
    "format_version a string": (_set("format_version", "x"), ["format_version is 'x'"]),
    "format_version 0": (_set("format_version", 0), ["format_version is 0"]),
    "format_version newer": (_set("format_version", 99), ["model format 99 is newer"]),
    "head state missing": (_set("heads|property|state", ...), ["heads.property lacks state"]),
    "no property head": (_set("heads|property", ...), ["a finetuned model has heads []"]),
    "encoder weight missing": (
        _set("encoder|state|conv_to_fc.bias", ...),
        ["encoder.state lacks conv_to_fc.bias"],
    ),
    "head hidden width huge": (
        _set("heads|property|init_args|hidden_dim", 10**9),
        ["heads.property.state['0.weight']"],
    ),
    "head width vs encoder": (
        _set("heads|property|init_args|in_dim", 64),
        ["heads.property.init_args give an input width of 64, its input is 32 wide"],
    ),
    "unknown head type": (_set("heads|property|type", "os.system"), ["unknown head 'os.system'"]),
    "head init arg unknown": (
        _set("heads|property|init_args|evil", 1),
        ["heads.property.init_args do not build (TypeError"],
    ),
    "kind unknown": (_set("kind", "evil"), ["kind is 'evil'"]),
    "n_conv a bool": (_set("encoder|init_args|n_conv", True), ["n_conv is True"]),
    "stored weights wider than the init args": (
        _widen("embedding.weight", 12000),
        ["(12000, 92)", "(16, 92)"],
    ),
    "non-finite weights": (
        _set("heads|property|state|2.bias", torch.tensor([float("nan")])),
        ["non-finite"],
    ),
    "target_std zero": (_set("info|target_std", 0.0), ["info.target_std is 0.0"]),
    "target_transform a list": (
        _set("info|target_transform", ["log10"]),
        ["info.target_transform is ['log10']"],
    ),
    "max_neighbors not whole": (
        _set("graph_settings|max_neighbors", 12.5),
        ["graph_settings.max_neighbors is 12.5, expected a whole number"],
    ),
    "radius a million Å": (
        _set("graph_settings|radius", 1e6),
        ["graph_settings.radius is 1000000.0 Å, at most"],
    ),
    "stride-0 element table": (
        _set("featurizer|table", torch.zeros(1).expand(20000, 5000)),
        ["featurizer.table is not a dense table"],
    ),
    "unit not a string": (_set("info|unit", 3), ["info.unit is 3"]),
    "auxiliary targets without head outputs": (
        _set("info|aux_targets", [{"column": "gap", "mean": 1.0, "std": 0.5}]),
        ["(1 in info.aux_targets): 2 expected, this one has 1"],
    ),
    "a wider regression head without auxiliary targets": (
        _wider_head(3),
        ["(0 in info.aux_targets): 1 expected, this one has 3"],
    ),
    "auxiliary target std zero": (
        _set("info|aux_targets", [{"column": "gap", "mean": 1.0, "std": 0.0}]),
        ["info.aux_targets[0].std is 0.0"],
    ),
    "auxiliary target without its mean": (
        _set("info|aux_targets", [{"column": "gap", "std": 1.0}]),
        ["info.aux_targets[0]"],
    ),
    "auxiliary target listed twice": (
        _set(
            "info|aux_targets",
            [
                {"column": "gap", "mean": 1.0, "std": 0.5},
                {"column": "gap", "mean": 1.0, "std": 0.5},
            ],
        ),
        ["info.aux_targets[1].column 'gap' is the target's or listed twice"],
    ),
    "auxiliary targets of a classifier": (
        _both(
            _set("info|task", "classification"),
            _set("info|aux_targets", [{"column": "gap", "mean": 1.0, "std": 0.5}]),
        ),
        ["info.aux_targets: a 'classification' model learns no auxiliary targets"],
    ),
    "auxiliary target named class (its predictions would be a classifier's column)": (
        _set("info|aux_targets", [{"column": "class", "mean": 1.0, "std": 0.5}]),
        ["info.aux_targets[0].column 'class' is a reserved name"],
    ),
    "auxiliary targets not a list": (
        _set("info|aux_targets", "gap"),
        ["info.aux_targets is 'gap'"],
    ),
    "unknown target transform": (_set("info|target_transform", "exp"), ["target_transform"]),
    "labelled-id hashes a list": (
        _set("info|labelled_id_hashes", [1, 2]),
        ["info.labelled_id_hashes is list"],
    ),
    "labelled-id hashes not int64": (
        _set("info|labelled_id_hashes", torch.tensor([1.0, 2.0])),
        ["1-d int64"],
    ),
    "labelled-id hashes a stride-0 view": (
        _set("info|labelled_id_hashes", torch.tensor([7]).expand(10**9)),
        ["labelled_id_hashes is not a dense tensor"],
    ),
    "earlier records not a list": (
        _set("info|labelled_earlier", {"data_source": "x"}),
        ["info.labelled_earlier is not a list"],
    ),
    "labelled-id hashes unsorted": (
        _set("info|labelled_id_hashes", torch.tensor([3, 1])),
        ["not sorted and unique"],
    ),
    "graph setting unknown": (_set("graph_settings|cutoff", 5.0), ["graph_settings has unknown"]),
    "graph setting invalid": (_set("graph_settings|radius", -1.0), ["radius must be positive"]),
    "featurizer fingerprint": (
        _set("featurizer|fingerprint", "0" * 64),
        ["does not match its fingerprint"],
    ),
}
#: name: (edit of a format-1 file, words): read through the adapter, checked the same way
FORMAT_1_FORGERIES = {
    "stride-0 weights of a 12000-wide encoder": (_hollow(12000), ["not a dense tensor"]),
    "atom_fea_len 12000": (
        _set("encoder_config|atom_fea_len", 12000),
        ["encoder.state['embedding.weight'] has shape (16, 92)", "(12000, 92)"],
    ),
    "n_conv 10 million": (
        _set("encoder_config|n_conv", 10_000_000),
        ["n_conv is 10000000 but the stored weights hold 2 convolutions"],
    ),
    "unknown config key": (_set("encoder_config|bogus", 1), ["encoder.init_args has unknown key"]),
    "head_state missing": (_set("head_state", ...), ["lacks head_state"]),
    "head without weights": (_set("head_state", None), ["both be given or both be None"]),
    "head hidden width huge": (
        _set("head|hidden_dim", 10**9),
        ["heads.property.state['0.weight']"],
    ),
    "head width vs encoder": (_set("head|in_dim", 64), ["input width of 64"]),
    "unknown head type": (_set("head|type", "os.system"), ["unknown head 'os.system'"]),
    "head key unknown": (_set("head|bogus", 1), ["head has unknown key"]),
    "stored weights wider than the config": (
        _widen("embedding.weight", 12000),
        ["(12000, 92)", "(16, 92)"],
    ),
}


@pytest.fixture
def no_encoder_built(monkeypatch):
    """Fail the test if anything constructs an encoder (which would allocate its weights)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an encoder was built from a model file that fails its checks")

    monkeypatch.setattr(cgcnn.CGCNNEncoder, "__init__", refuse)


def _refused(forged, tmp_path, capsys, words):
    path = tmp_path / "model.pt"
    torch.save(forged, path)
    torch.load(path, weights_only=True)  # a valid weights_only payload
    started = time.perf_counter()
    code = main(
        ["predict", str(path), str(tmp_path / "crystals"), "--out", str(tmp_path / "p.csv")]
    )
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"crystaltwins predict: error: {path}: ")
    for word in words:
        assert word in err
    assert seconds < 5.0  # the forged 12000-wide encoder took 22 s and 4.8 GB before
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_model_file_is_one_line_exit_2_before_building(
    name, payload, tmp_path, capsys, no_encoder_built
):
    edit, words = FORGERIES[name]
    forged = copy.deepcopy(payload)
    edit(forged)
    _refused(forged, tmp_path, capsys, words)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"n_layers": 20_000}, "encoder.init_args.n_layers is 20000, at most 64 expected"),
        ({"feat_dim": 10**7}, "encoder.init_args.feat_dim is 10000000, at most 16384 expected"),
        ({"gaussian": {"dmin": 0.0, "dmax": 8.0, "step": 1e-9, "var": None}}, "Gaussians (at most"),
    ],
)
def test_a_forged_gin_file_is_refused_before_it_is_built(edit, words, tmp_path, capsys):
    """Encoders without their own check (GIN, GATGNN, OGCNN) were built from the file's init
    args alone: 20,000 layers took 80 s, a tiny Gaussian step ~64 GB."""
    from crystaltwins.models.gin import GINEncoder

    featurizer = _featurizer()
    encoder = GINEncoder(torch.tensor(featurizer.table), emb_dim=8, n_layers=2, feat_dim=16)
    bundle = _bundle(featurizer)
    bundle = ModelBundle(encoder, PropertyHead(encoder.out_dim, 8, 1), "finetuned", featurizer,
                         GraphSettings(), bundle.info)  # fmt: skip
    forged = torch.load(save_model(tmp_path / "gin.pt", bundle), weights_only=True)
    forged["encoder"]["init_args"].update(edit)
    _refused(forged, tmp_path, capsys, [words])


def test_saving_a_model_twice_gives_the_same_bytes(tmp_path):
    """The zip's inner folder was named after the temporary file: other bytes every time."""
    bundle = _bundle()
    first = save_model(tmp_path / "a.pt", bundle).read_bytes()
    assert save_model(tmp_path / "a.pt", bundle).read_bytes() == first


@pytest.mark.parametrize("name", list(FORMAT_1_FORGERIES))
def test_forged_format_1_file_is_checked_the_same_way(
    name, payload, tmp_path, capsys, no_encoder_built
):
    edit, words = FORMAT_1_FORGERIES[name]
    forged = _as_format_1(copy.deepcopy(payload))
    edit(forged)
    _refused(forged, tmp_path, capsys, words)


def test_model_file_stores_type_version_and_init_args(payload):
    assert payload["format_version"] == 2
    encoder = payload["encoder"]
    assert (encoder["type"], encoder["version"]) == ("cgcnn", 1)
    assert encoder["init_args"]["atom_fea_len"] == ATOM_FEA_LEN
    head = payload["heads"]["property"]
    assert head["type"] == "property"
    assert head["init_args"] == {"in_dim": H_FEA_LEN, "hidden_dim": 8, "out_dim": 1}


def test_format_1_file_loads_as_the_same_model(payload, tmp_path):
    """Files of earlier versions (format 1) load through the adapter, to the same weights."""
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    torch.save(_as_format_1(copy.deepcopy(payload)), old)
    torch.save(payload, new)
    a, b = load_model(old), load_model(new)
    for key, value in b.encoder.state_dict().items():
        assert torch.equal(a.encoder.state_dict()[key], value)
    for key, value in b.head.state_dict().items():
        assert torch.equal(a.head.state_dict()[key], value)
    assert a.property_model().target == b.property_model().target


def test_shipped_crystal_twins_model_is_format_1_and_loads():
    from crystaltwins.models.pretrained import shipped_model_path

    raw = torch.load(shipped_model_path("crystal-twins"), weights_only=True)
    assert raw["format_version"] == 1  # never regenerated: read by the adapter
    bundle = load_model("crystal-twins")
    assert bundle.kind == "pretrained" and bundle.head is not None
    assert bundle.head.config == {"in_dim": 128, "hidden_dim": 128, "out_dim": 256}


def test_a_valid_model_file_round_trips(payload, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    bundle = load_model(path)
    assert bundle.encoder.config["atom_fea_len"] == ATOM_FEA_LEN
    for key, value in payload["encoder"]["state"].items():
        assert torch.equal(bundle.encoder.state_dict()[key], value)
    assert bundle.head is not None and bundle.head[0].out_features == 8


def test_published_checkpoints_still_load(reference_dir):
    for name in ("CGCNNBarlow_model.pth", "CGCNNSimSiam_model.pth"):
        bundle = load_model(reference_dir / name)
        assert bundle.encoder.config["atom_fea_len"] == 64 and bundle.kind == "pretrained"
    assert load_model("crystal-twins").encoder.out_dim == 128


# --- malicious pickles: refused, never executed ---------------------------------------------


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _write_malicious(kind: str, path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    evil = _Payload(marker)
    if kind == "torch.save zip":
        torch.save({"format": "crystaltwins-model", "info": evil}, path)
    elif kind == "torch.save legacy":
        torch.save({"embedding.weight": torch.zeros(2, 2), "x": evil}, path,
                   _use_new_zipfile_serialization=False)  # fmt: skip
    elif kind == "plain pickle":
        with open(path, "wb") as handle:
            pickle.dump({"state_dict": evil}, handle)
    else:  # a Lightning checkpoint for --resume
        torch.save({"state_dict": {}, "epoch": 0, "callbacks": evil}, path)


@pytest.mark.parametrize("kind", ["torch.save zip", "torch.save legacy", "plain pickle"])
@pytest.mark.parametrize("command", ["predict", "embed", "plot", "finetune"])
def test_malicious_model_files_are_refused_and_not_run(kind, command, tmp_path, capsys):
    marker = tmp_path / "EXECUTED"
    model = tmp_path / "model.pt"
    _write_malicious(kind, model, marker)
    data = str(tmp_path / "crystals")
    argv = {
        "predict": ["predict", str(model), data, "--out", str(tmp_path / "p.csv")],
        "embed": ["embed", str(model), data, "--out", str(tmp_path / "e.npz")],
        "plot": ["plot", str(model), "--data", data, "--out", str(tmp_path / "m.png")],
        "finetune": ["finetune", data, "--target", "y", "--pretrained", str(model)]
        + ["--out", str(tmp_path / "run")],
    }[command]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists()
    assert not [w for w in caught if "pickle" in str(w.message)]  # stderr: the one line only
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "weights_only" not in err
    assert str(model) in err


def test_malicious_resume_checkpoint_is_one_line(data_dir, cache_root, tmp_path, capsys):
    marker = tmp_path / "EXECUTED"
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    _write_malicious("lightning checkpoint", last, marker)
    (run / LOCK_NAME).touch()  # a run folder, as a run leaves it
    code = main(
        ["finetune", str(data_dir / "samples" / "cgcnn_regression"), "--target", "target"]
        + ["--from-scratch", "--out", str(run), "--resume", "--epochs", "1"]
        + ["--cache-root", str(cache_root), "--no-progress", "--accelerator", "cpu"]
    )
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "weights_only" not in err
    assert err.startswith(f"crystaltwins finetune: error: {last}: refused")
    assert last.exists()  # the user's file is left where it was


@pytest.mark.parametrize("damage", ["truncated", "no lightning version"])
def test_damaged_resume_checkpoint_is_one_line(damage, data_dir, cache_root, tmp_path, capsys):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    (run / LOCK_NAME).touch()
    torch.save({"state_dict": {}, "epoch": 0}, last)
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:100])
    code = main(
        ["finetune", str(data_dir / "samples" / "cgcnn_regression"), "--target", "target"]
        + ["--from-scratch", "--out", str(run), "--resume", "--epochs", "1"]
        + ["--cache-root", str(cache_root), "--no-progress", "--accelerator", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    reason = "not a readable checkpoint" if damage == "truncated" else "not a complete training"
    assert err.startswith(f"crystaltwins finetune: error: {last}: {reason}")


def test_resume_checkpoint_of_another_model_is_one_line(data_dir, cache_root, tmp_path, capsys):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    (run / LOCK_NAME).touch()
    wrong = {"encoder.embedding.weight": torch.zeros(12000, 92)}
    entries = ["pytorch-lightning_version", "epoch", "global_step", "loops", "optimizer_states"]
    checkpoint = {key: None for key in [*entries, "lr_schedulers", "callbacks"]}
    torch.save({**checkpoint, "state_dict": wrong, "pytorch-lightning_version": "2.5.0"}, last)
    code = main(
        ["finetune", str(data_dir / "samples" / "cgcnn_regression"), "--target", "target"]
        + ["--from-scratch", "--out", str(run), "--resume", "--epochs", "1"]
        + ["--cache-root", str(cache_root), "--no-progress", "--accelerator", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"crystaltwins finetune: error: {last}: this checkpoint does not fit")
    assert "encoder.embedding.weight (12000, 92) instead of (64, 92)" in err


def test_hollow_published_state_dict_is_refused_before_building(
    reference_dir, tmp_path, capsys, no_encoder_built
):
    """A ``.pth`` of stride-0 views claiming a 12000-wide encoder: refused, nothing allocated."""
    import shutil

    state = torch.load(
        reference_dir / "CGCNNBarlow_model.pth", map_location="cpu", weights_only=True
    )
    state["embedding.weight"] = torch.zeros(()).expand(12000, 92)
    path = tmp_path / "CGCNNBarlow_model.pth"
    torch.save(state, path)
    shutil.copy(reference_dir / "atom_init.json", tmp_path / "atom_init.json")
    code = main(["embed", str(path), str(tmp_path / "crystals"), "--out", str(tmp_path / "e.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "embedding.weight is not a dense tensor" in err and str(path) in err


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_published_state_dict_with_non_finite_weights_is_one_line(
    bad, reference_dir, tmp_path, capsys
):
    """A damaged or diverged ``.pth`` (our model files are checked the same way): refused by
    name before any embedding, not NaN vectors."""
    import shutil

    state = torch.load(
        reference_dir / "CGCNNBarlow_model.pth", map_location="cpu", weights_only=True
    )
    state["convs.1.fc_full.bias"][3] = bad
    path = tmp_path / "CGCNNBarlow_model.pth"
    torch.save(state, path)
    shutil.copy(reference_dir / "atom_init.json", tmp_path / "atom_init.json")
    out = tmp_path / "e.npz"
    code = main(["embed", str(path), str(tmp_path / "crystals"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert "convs.1.fc_full.bias holds non-finite values (NaN or inf)" in err and str(path) in err


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ("wide", "2000-wide atoms and 3 convolutions (at most 1024 and 16 read)"),
        ("many convolutions", "64-wide atoms and 40 convolutions (at most 1024 and 16 read)"),
        ("a key no name", "a key is no name"),
    ],
)
def test_a_forged_published_state_dict_is_one_line_before_building(
    edit, words, reference_dir, tmp_path, capsys
):
    """Sized by its key names and shapes before loading, a 765 KB .pth took ~635 MB (growing
    as width^2 x convolutions); a non-string key was a traceback."""
    import shutil

    state = torch.load(
        reference_dir / "CGCNNBarlow_model.pth", map_location="cpu", weights_only=True
    )
    if edit == "wide":
        state["embedding.weight"] = torch.zeros(2000, 92)
    elif edit == "many convolutions":
        for k in range(3, 40):
            state[f"convs.{k}.fc_full.bias"] = torch.zeros(1)
    else:
        state[5] = torch.zeros(1)
    path = tmp_path / "CGCNNBarlow_model.pth"
    torch.save(state, path)
    shutil.copy(reference_dir / "atom_init.json", tmp_path / "atom_init.json")
    code = main(["embed", str(path), str(tmp_path / "crystals"), "--out", str(tmp_path / "e.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err


def test_a_training_checkpoint_given_as_a_model_points_to_model_pt(tmp_path):
    """``checkpoints/best.ckpt`` is what a user may try first: the message says what to give."""
    import lightning

    checkpoint = tmp_path / "best.ckpt"
    torch.save(
        {"pytorch-lightning_version": lightning.__version__, "epoch": 3, "state_dict": {}},
        checkpoint,
    )
    with pytest.raises(ValueError, match="a training checkpoint .*give the run's model.pt"):
        load_model(checkpoint)


def test_an_ensemble_of_members_in_other_units_is_refused(tmp_path):
    """Members in eV/atom and meV/atom were averaged; an ensemble's own info disagreeing with
    its members' was shown by `info`."""
    from crystaltwins.models.checkpoint import EnsembleBundle, load_predictor, save_ensemble

    first, second = _bundle(), _bundle()
    first.info["unit"], second.info["unit"] = "eV/atom", "meV/atom"
    path = save_ensemble(tmp_path / "e.pt", EnsembleBundle([first, second], dict(first.info)))
    with pytest.raises(ValueError, match=r"members\[1\] has info.unit 'meV/atom'"):
        load_predictor(path)
    second.info["unit"] = "eV/atom"
    claimed = {**first.info, "targets": ["band_gap"]}
    path = save_ensemble(tmp_path / "e.pt", EnsembleBundle([first, second], claimed))
    with pytest.raises(ValueError, match=r"info.targets is \['band_gap'\], its members' \['y'\]"):
        load_predictor(path)
