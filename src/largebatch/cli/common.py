"""What several subcommands share: their common options, each declared once here (the help text is
the subcommand's where it differs), the types of list-valued options, and the check of an output
path before any work. Stdlib only."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

SET_HELP = "override a config key, e.g. --set train.epochs=10 (repeatable; values are YAML)"
TRUST_PLUGINS_HELP = (
    "load the plugin model or data set (module:callable or entry point) that the run's stored config "
    "names, running its code; without it such a run is refused unless --set names the plugin. Only "
    "for runs you trust"
)


def add_set(parser: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable): config overrides, in ``args.set``."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_trust_plugins(parser: argparse.ArgumentParser) -> None:
    """``--trust-plugins``: import a plugin that only a stored config names (registry docstring)."""
    parser.add_argument("--trust-plugins", action="store_true", help=TRUST_PLUGINS_HELP)


def add_recipe(parser: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    """``--recipe NAME``: a recipe of ``largebatch recipes``."""
    parser.add_argument("--recipe", default=default, help=help)


def add_nproc(parser: argparse.ArgumentParser, *, default: int | None, help: str) -> None:
    """``--nproc N``: local worker processes (of the run, of each run, of the probe)."""
    parser.add_argument("--nproc", type=int, default=default, help=help)


def add_out(parser: argparse.ArgumentParser, *, default: str | None, help: str) -> None:
    """``--out PATH``: where the command writes (a run, sweep, study or report directory)."""
    parser.add_argument("--out", default=default, help=help)


def add_batch_sizes(parser: argparse.ArgumentParser, *, default: list[int], help: str) -> None:
    """``--batch-sizes B,B,...``: global batch sizes, comma-separated."""
    parser.add_argument("--batch-sizes", type=int_list, default=default, help=help)


def int_list(text: str) -> list[int]:
    """``128,256,512`` as a list of integers (an argparse type)."""
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 128,256,512") from None


def float_list(text: str) -> list[float]:
    """``0.25,0.5,1,2`` as a list of numbers (an argparse type)."""
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 0.25,0.5,1,2") from None


def cannot_write(path: str, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file in an existing folder (``folder``: made, with its
    parents, or filled as a folder), or None. Checked before the work; nothing is created."""
    target = Path(path).absolute()
    if folder and target.exists() and not target.is_dir():
        return f"{target} is a file, not a folder"
    if not folder and target.is_dir():
        return f"{target} is a folder"
    if not folder and not target.parent.exists():
        return f"folder {target.parent} does not exist"
    ancestor = target if folder else target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:  # made on the way, as mkdir -p does
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK) or (target.is_file() and not os.access(target, os.W_OK)):
        return f"permission denied in {ancestor}"
    return None
