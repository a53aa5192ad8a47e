"""``crystaltwins cache list|clean``: the graph caches under the cache root
(the logic: :mod:`crystaltwins.data.cache_admin`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_cache_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``cache`` (with ``list`` and ``clean``) on the CLI's subparsers."""
    p = subparsers.add_parser("cache", help="list or remove graph caches under the cache root")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "show every graph cache: size, crystals, last use, settings, source"),
        ("clean", "remove graph caches (only crystaltwins caches; those in use are skipped)"),
    ):
        q = actions.add_parser(name, help=text)
        q.add_argument(
            "--cache-root",
            help="where graph caches live (default $CRYSTALTWINS_CACHE or ~/.cache/crystaltwins)",
        )
        if name == "clean":
            q.add_argument(
                "--older-than",
                type=float,
                metavar="DAYS",
                help="only caches not used for DAYS days (default: every cache)",
            )
            q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.set_defaults(handler=run_cache)
    return p


def run_cache(args: argparse.Namespace) -> int:
    from crystaltwins.data.cache_admin import clean_caches, human_size, list_caches
    from crystaltwins.data.sources import default_cache_root

    root = args.cache_root or default_cache_root()
    if args.action == "clean":
        report = clean_caches(root, args.older_than, dry_run=args.dry_run)
        print("\n".join(report.lines()))
        return 0
    entries = list_caches(root)
    if not entries:
        print(f"no graph caches under {root}")
        return 0
    rows = [["cache", "size", "crystals", "last use", "graph", "source"]]
    rows += [entry.row() for entry in entries]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    total = sum(entry.size for entry in entries)
    print(f"{len(entries)} caches, {human_size(total)} under {root}")
    return 0
