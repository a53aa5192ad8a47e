"""Config fields as command-line options, and back: a run's settings as the flags that give them."""

from __future__ import annotations

import argparse
import dataclasses

from crystaltwins.cli.options import add_config_options, given_settings, settings_as_flags
from crystaltwins.training.configs import FinetuneConfig


def test_a_runs_settings_as_flags_parse_back_to_those_settings() -> None:
    config = FinetuneConfig(
        data="mp36k.csv.gz",
        target="formation_energy_per_atom",
        out="runs/x",
        from_scratch=True,
        aux_targets=["band_gap", "efermi"],
        split=(0.9, 0.05, 0.05),
        epochs=30,
        lr=0.0005,
        plots=False,  # a boolean that defaults to true: --no-plots
    )
    flags = settings_as_flags(FinetuneConfig, dataclasses.asdict(config), skip=("out",))
    assert "--no-plots" in flags and "--out" not in flags and "--data" not in flags
    assert "--batch-size" not in flags  # a default is left out
    parser = argparse.ArgumentParser()
    add_config_options(parser, FinetuneConfig)
    given = given_settings(parser.parse_args(flags), FinetuneConfig)
    assert given == {
        "target": "formation_energy_per_atom",
        "from_scratch": True,
        "aux_targets": ["band_gap", "efermi"],
        "split": [0.9, 0.05, 0.05],  # as argparse gives several values
        "epochs": 30,
        "lr": 0.0005,
        "plots": False,
    }
