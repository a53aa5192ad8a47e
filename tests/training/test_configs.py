"""Every setting has one owner: the configs hold the defaults, check themselves before any work,
and the CLI's options are made from them."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from crystaltwins.cli.main import build_parser, main
from crystaltwins.evaluation.bench import PRESETS, BenchConfig
from crystaltwins.graph.settings import GraphSettings
from crystaltwins.models.checkpoint import load_model
from crystaltwins.training.configs import (
    DEFAULT_ENCODER_LR_FACTOR,
    PAPER_ENCODER_LR_FACTOR,
    FinetuneConfig,
    PretrainConfig,
)

TINY = ["--epochs", "1", "--accelerator", "cpu", "--devices", "1", "--no-progress"]


def _subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


@pytest.mark.parametrize(
    ("command", "config_cls"),
    [("pretrain", PretrainConfig), ("finetune", FinetuneConfig), ("bench", BenchConfig)],
)
def test_every_setting_is_an_option_with_its_default_in_the_help(command, config_cls):
    sub = _subparser(command)
    dests = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("cli", True) is False:
            continue
        assert f.name in dests, f"{command}: no option for {f.name}"
        action = dests[f.name]
        assert action.default is None or action.default is False or action.const is not None
        shows = f.default not in (None, False, True, dataclasses.MISSING, "")
        if shows:
            assert "default:" in action.help, f"{command} --{f.name}: default not shown"
    text = sub.format_help()
    if command == "finetune":
        assert dests["encoder_lr_factor"].help.endswith("(default: 1)")
    if command == "bench":
        for preset in PRESETS.values():
            assert re.search(rf"{preset.name}: ", text.replace("\n", " "))


def test_positionals_have_help():
    for name in ("featurize", "graph", "pretrain", "finetune", "predict", "embed", "plot"):
        for action in _subparser(name)._actions:
            if not action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.dest}: no help"


def test_encoder_lr_factor_has_one_default_and_one_scratch_rule():
    fields = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    assert fields["encoder_lr_factor"] == DEFAULT_ENCODER_LR_FACTOR == 1.0
    assert PRESETS["paper"].encoder_lr_factor == PAPER_ENCODER_LR_FACTOR == 0.2
    assert PRESETS["cpu"].encoder_lr_factor == DEFAULT_ENCODER_LR_FACTOR
    ct = FinetuneConfig(data="d", target="t", out="o", pretrained="m", encoder_lr_factor=0.3)
    scratch = dataclasses.replace(ct, pretrained=None, from_scratch=True)
    assert ct.effective_encoder_lr_factor == 0.3 and scratch.effective_encoder_lr_factor == 1.0
    # the paper preset is the configs' defaults
    assert PRESETS["paper"].pretrain_epochs == 15 and PRESETS["paper"].finetune_epochs == 200


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pretrained": "m", "from_scratch": True}, "exactly one of --pretrained"),
        ({"from_scratch": True, "epochs": 0}, "epochs must be at least 1"),
        ({"from_scratch": True, "split": (0.5, 0.2, 0.2)}, "add up to 1"),
        ({"from_scratch": True, "fold": 1, "split_column": "s"}, "one way to split"),
        ({"from_scratch": True, "fold": 5}, "fold must be 0-4"),
        ({"from_scratch": True, "target_transform": "log"}, "target_transform"),
        ({"from_scratch": True, "radius": -1.0}, "radius must be positive"),
        ({"from_scratch": True, "ensemble": 0}, "ensemble must be a whole number"),
    ],
)
def test_finetune_config_is_checked_before_any_work(tmp_path, settings, message):
    from crystaltwins.api import finetune

    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        finetune(tmp_path / "missing.csv", "t", out, **settings)
    assert not out.exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"augment": "rp,xx"}, "unknown augmentation"),
        ({"objective": "vicreg2"}, "unknown objective"),
    ],
)
def test_pretrain_config_is_checked_before_any_cache_is_built(
    perovskite_subset, tmp_path, settings, message
):
    from crystaltwins.api import pretrain

    caches = tmp_path / "caches"
    with pytest.raises(ValueError, match=message):
        pretrain(perovskite_subset, tmp_path / "run", cache_root=str(caches), **settings)
    assert not (tmp_path / "run").exists() and not caches.exists()


def test_graph_settings_default_is_written_once():
    """The configs say "not given" (None); GraphSettings holds the numbers."""
    config = FinetuneConfig(data="d", target="t", out="o", from_scratch=True)
    assert config.graph_settings() == GraphSettings()
    assert config.graph_settings(GraphSettings(radius=6.0)).radius == 6.0
    asked = dataclasses.replace(config, radius=5.0)
    assert asked.graph_settings(GraphSettings(radius=6.0)).radius == 5.0


def test_gaussian_expansion_ends_at_the_radius():
    """As CGCNN's GaussianDistance(dmin, dmax=radius, step): 41 centres at 8 Å, 51 at 10 Å
    (a fixed 8 Å gave edges at 9-10 Å all the same near-zero features); an explicit end, as
    stored by an earlier model, is kept."""
    assert GraphSettings().gaussian_dmax == 8.0
    assert GraphSettings(radius=10.0).gaussian_dmax == 10.0
    stored = GraphSettings.from_dict({"radius": 10.0, "gaussian_dmax": 8.0})
    assert stored.gaussian_dmax == 8.0
    config = FinetuneConfig(data="d", target="t", out="o", from_scratch=True, radius=10.0)
    settings = config.graph_settings(GraphSettings(radius=6.0))  # e.g. a cache's
    assert (settings.radius, settings.gaussian_dmax) == (10.0, 10.0)
    from crystaltwins.graph.atom_features import AtomFeaturizer
    from crystaltwins.training.common import new_encoder

    encoder = new_encoder(AtomFeaturizer.builtin(), settings)
    assert encoder.gaussian.num_features == 51


def _default(callable_, name):
    return inspect.signature(callable_).parameters[name].default


def test_config_defaults_are_the_library_defaults():
    """``configs`` stays torch-free, so the settings that mirror a loss's or an augmentation's
    constructor repeat its default: they must not drift apart."""
    from crystaltwins.data.splits import random_split
    from crystaltwins.losses import BarlowTwinsLoss
    from crystaltwins.training.finetune import FinetuneModule
    from crystaltwins.training.pretrain import PretrainModule
    from crystaltwins.transforms import AtomMasking, EdgeMasking, GaussianNoise, RandomPerturbation

    pre = PretrainConfig(data=["d"], out="o")
    assert pre.barlow_lambda == _default(BarlowTwinsLoss, "lambda_")
    assert pre.perturbation == _default(RandomPerturbation, "distance")
    assert pre.perturbation == GraphSettings().perturbation_margin
    assert pre.noise_sigma == _default(GaussianNoise, "sigma")
    assert pre.atom_mask_fraction == _default(AtomMasking, "fraction")
    assert pre.edge_mask_fraction == _default(EdgeMasking, "fraction")
    assert (pre.lr, pre.weight_decay) == (
        _default(PretrainModule, "lr"),
        _default(PretrainModule, "weight_decay"),
    )
    fine = FinetuneConfig(data="d", target="t", out="o", from_scratch=True)
    assert tuple(fine.split) == tuple(_default(random_split, "fractions"))
    assert (fine.lr, fine.weight_decay) == (
        _default(FinetuneModule, "lr"),
        _default(FinetuneModule, "weight_decay"),
    )


@pytest.mark.slow
def test_a_6_angstrom_graph_trains_end_to_end(perovskite_subset, cache_root, tmp_path, capsys):
    """pretrain --radius 6; a 6 Å cache from featurize fine-tunes without repeating the radius;
    a pre-trained model's own settings win, and asking for others says so."""
    pre = tmp_path / "pre"
    code = main(
        ["pretrain", str(perovskite_subset), "--out", str(pre), "--radius", "6"]
        + ["--max-neighbors", "8", "--max-crystals", "120", "--batch-size", "32"]
        + ["--cache-root", str(cache_root), *TINY]
    )
    assert code == 0, capsys.readouterr().err
    settings = load_model(pre / "model.pt").graph_settings
    assert (settings.radius, settings.max_neighbors) == (6.0, 8)

    cache = tmp_path / "cache6"
    assert main(["featurize", str(perovskite_subset), "--out", str(cache), "--radius", "6"]) == 0
    scratch = tmp_path / "scratch"
    code = main(
        ["finetune", str(cache), "--target", "e_form", "--from-scratch", "--out", str(scratch)]
        + ["--max-train", "60", "--max-eval", "40", *TINY]
    )
    assert code == 0, capsys.readouterr().err
    assert load_model(scratch / "model.pt").graph_settings.radius == 6.0

    capsys.readouterr()
    code = main(
        ["finetune", str(perovskite_subset), "--target", "e_form", "--pretrained", str(pre)]
        + ["--out", str(tmp_path / "ct8"), "--radius", "8", *TINY]
    )
    err = capsys.readouterr().err
    assert code == 2 and "brings its own graph settings" in err and "radius 8" in err
    assert not (tmp_path / "ct8" / "model.pt").exists()


def test_a_pretrained_model_brings_its_own_encoder(perovskite_subset, cache_root, tmp_path, capsys):
    """Asking the shipped CGCNN model for another encoder or other sizes is one line, exit 2,
    before any training (as for graph settings); nothing is silently ignored."""
    for extra, words in (
        (["--encoder", "gin"], "encoder gin (the model's: cgcnn)"),
        (["--h-fea-len", "64"], "h_fea_len 64"),
    ):
        out = tmp_path / extra[0].strip("-")
        code = main(
            ["finetune", str(perovskite_subset), "--target", "e_form"]
            + ["--pretrained", "crystal-twins"]
            + ["--out", str(out), "--cache-root", str(cache_root), *extra, *TINY]
        )
        err = capsys.readouterr().err
        assert code == 2 and "brings its own encoder" in err and words in err, err
        assert len(err.strip().splitlines()) == 1
        assert not (out / "model.pt").exists()


def test_a_size_the_encoder_does_not_take_is_refused(
    perovskite_subset, cache_root, tmp_path, capsys
):
    """GATGNN has no convolution count: --n-conv is refused by name, not dropped."""
    code = main(
        ["finetune", str(perovskite_subset), "--target", "e_form", "--from-scratch"]
        + ["--encoder", "gatgnn", "--n-conv", "5", "--out", str(tmp_path / "g")]
        + ["--cache-root", str(cache_root), *TINY]
    )
    err = capsys.readouterr().err
    assert code == 2 and "encoder 'gatgnn' takes no n_conv" in err, err


def test_encoder_sizes_default_to_the_encoders_own():
    """No size asked for: each encoder builds with its own defaults (CGCNN: 64 / 3 / 128)."""
    config = FinetuneConfig(data="d", target="t", out="o", from_scratch=True)
    assert config.encoder_sizes() == {} and config.encoder_name == "cgcnn"
    asked = dataclasses.replace(config, encoder="gin", n_conv=2)
    assert asked.encoder_sizes() == {"n_conv": 2}
    assert asked.encoder_conflicts("cgcnn") == ["encoder gin (the model's: cgcnn)", "n_conv 2"]


def test_a_config_file_takes_the_flag_names_and_a_runs_own_config_yaml(tmp_path, capsys):
    """``no_progress: true`` is ``--no-progress``; ``data:`` stands for the positional argument;
    ``resume`` / ``overwrite`` (recorded in every run's config.yaml) do not carry over."""
    from crystaltwins.training.configs import config_from_settings

    settings = {"data": "x.csv", "target": "t", "out": "o", "from_scratch": True}
    config = config_from_settings(
        FinetuneConfig, {**settings, "no_progress": True, "resume": True, "overwrite": True}
    )
    assert (config.data, config.progress, config.resume, config.overwrite) == (
        "x.csv",
        False,
        False,
        False,
    )
    for wrong in (None, "false"):
        with pytest.raises(ValueError, match="no_plots takes true or false"):
            config_from_settings(FinetuneConfig, {**settings, "no_plots": wrong})
    with pytest.raises(ValueError, match=r"unknown settings \['no_such'\]"):
        config_from_settings(FinetuneConfig, {**settings, "no_such": True})
    file = tmp_path / "settings.yaml"
    file.write_text(f"data: {tmp_path / 'missing.csv'}\ntarget: t\nout: {tmp_path / 'r'}\n")
    code = main(["finetune", "--config", str(file), "--from-scratch", "--no-progress"])
    assert code == 2 and "missing.csv: no such file" in capsys.readouterr().err  # file's data
    code = main(["finetune", "--target", "t", "--out", str(tmp_path / "r2"), "--from-scratch"])
    assert code == 2 and not (tmp_path / "r2").exists()
    assert "give the data (on the command line or in --config)" in capsys.readouterr().err


def test_a_config_file_without_data_names_what_is_missing(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "p")]) == 2
    assert "give the data (on the command line or in --config)" in capsys.readouterr().err


def test_a_config_files_values_take_each_settings_type(tmp_path, capsys):
    """YAML reads ``lr: 1e-3`` (the paper's value, written as people write it) as text: it was a
    ``TypeError`` traceback; ``split: 0.8,0.1,0.1`` was split into characters; ``data: [a, b]``
    for finetune a ``TypeError``. Values now take the setting's type, or one line naming it."""
    import yaml

    from crystaltwins.training.configs import PretrainConfig, config_from_settings

    text = (
        "data: x.csv\ntarget: 7\nout: o\nfrom_scratch: yes\nlr: 1e-3\nepochs: '20'\n"
        "split: 0.8,0.1,0.1\nmax_train: 1e3\ndevices: 1\nprecision: 32\n"
    )
    config = config_from_settings(FinetuneConfig, yaml.safe_load(text))
    assert (config.lr, config.epochs, config.max_train) == (1e-3, 20, 1000)
    assert isinstance(config.lr, float) and isinstance(config.epochs, int)
    assert config.split == (0.8, 0.1, 0.1) and config.target == "7"
    assert (config.devices, config.precision) == ("1", "32")
    config.validate()  # was: TypeError '>' not supported between 'str' and 'int'
    base = {"data": "x.csv", "target": "t", "out": "o", "from_scratch": True}
    for wrong, words in (
        ({"lr": "fast"}, "lr takes a number, got 'fast'"),
        ({"epochs": 2.5}, "epochs takes a whole number, got 2.5"),
        ({"epochs": True}, "epochs takes a number, got True"),
        ({"data": ["a.csv", "b.csv"]}, "data: one labelled data source, got 2"),
        ({"target": ["a", "b"]}, "target takes one value"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            config_from_settings(FinetuneConfig, {**base, **wrong})
    given_nothing = config_from_settings(FinetuneConfig, {**base, "unit": None, "epochs": None})
    assert (given_nothing.unit, given_nothing.epochs) == ("", 200)  # "unit:" alone: the default
    one = config_from_settings(FinetuneConfig, {**base, "data": ["only.csv"]})
    assert one.data == "only.csv"
    with pytest.raises(ValueError, match="no_plots takes true or false") as flag:
        config_from_settings(FinetuneConfig, {**base, "no_plots": "yes please"})
    assert type(flag.value).__name__ == "SettingsFileError"  # the CLI names the file
    # a run's own config.yaml written when "default" named the Crystal Twins encoder
    legacy = {**base, "from_scratch": False, "pretrained": "default", "resume": False}
    assert config_from_settings(FinetuneConfig, {**legacy, "overwrite": False}).pretrained == (
        "crystal-twins"
    )
    assert config_from_settings(FinetuneConfig, legacy).pretrained == "default"  # a user's file
    import numpy as np

    numpy_seed = FinetuneConfig(**base, seed=np.int64(3))
    numpy_seed.validate()
    assert numpy_seed.seed == 3 and type(numpy_seed.seed) is int
    pre = config_from_settings(
        PretrainConfig,
        {"data": "my data, 2024.csv", "out": "o", "lr": "1e-5", "perturbation": "5e-2"},
    )
    assert pre.data == ["my data, 2024.csv"] and pre.lr == 1e-5 and pre.perturbation == 0.05
    file = tmp_path / "c.yaml"
    file.write_text(f"data: {tmp_path / 'x.csv'}\ntarget: t\nout: {tmp_path / 'r'}\nlr: one\n")
    assert main(["finetune", "--config", str(file), "--from-scratch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{file}: lr takes a number, got 'one'" in err


def test_a_negative_seed_or_no_device_is_named_before_any_work():
    """``--seed -1`` ended in numpy's "-1 is not in bounds" from Lightning; ``--devices 0`` in
    Lightning's message after the graph cache was built."""
    base = dict(data="d.csv", target="t", out="o", from_scratch=True)
    for wrong, words in (
        ({"seed": -1}, "seed must be a whole number from 0 to 2**32 - 1, got -1"),
        ({"seed": 2**32}, "seed must be a whole number"),
        ({"devices": "0"}, "devices must be 'auto', a number of devices >= 1"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            FinetuneConfig(**base, **wrong).validate()
    FinetuneConfig(**base, seed=2**32 - 1, devices="1").validate()
