"""``crystaltwins info MODEL``: what a model file is (the logic: :mod:`crystaltwins.evaluation.info`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_info_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``info`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "info", help="what a model file is: type, encoder, target and unit, data, metrics"
    )
    p.add_argument(
        "model",
        help="model.pt, the run folder holding it, a published .pth, or a shipped model: "
        "'default' (mp-multi-33k), 'crystal-twins', 'mp-eform', 'mp-multi', 'mp-multi-33k'",
    )
    p.add_argument(
        "--atom-init", help="for a published .pth: its atom_init.json (default: beside it)"
    )
    p.set_defaults(handler=run_info)
    return p


def run_info(args: argparse.Namespace) -> int:
    from crystaltwins.evaluation.info import describe_model

    print("\n".join(describe_model(args.model, atom_init=args.atom_init).lines()))
    return 0
