"""Command line: ``largebatch train | eval | recipes | simulate | data check | data prepare | sweep | study-report | critical-batch | advise``. Dispatch only; the work is in the packages.

Exit status: 0 success, 1 a failure while running, 2 bad input (unknown key, wrong type,
contradiction, missing data) found before any worker starts, 75 stopped by SIGTERM after writing a
checkpoint (continue with ``--resume auto``; 75 is EX_TEMPFAIL, "try again").

One module per subcommand (listed in :data:`COMMANDS`, in the order of ``largebatch --help``), each
with ``NAME``, ``HELP``, optionally ``DESCRIPTION``, ``EXAMPLES``, ``EXIT_STATUS``,
``add_arguments(parser)`` and ``run(args) -> int``; :mod:`.common` declares the options several of
them share, :mod:`.exits` turns exceptions into exit statuses, :mod:`.signals` keeps the SIGTERM
contract. A new subcommand is a new module here and its name in :data:`COMMANDS`.

Start-up: this package imports only the standard library and :mod:`largebatch.errors`, so that
:func:`main` installs its SIGTERM handler before anything slow is imported; :func:`build_parser`
then imports the subcommand modules (omegaconf, no torch), and a subcommand imports torch, where it
needs it, inside its ``run``: ``largebatch --help``, ``recipes`` and ``simulate`` never import it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from types import ModuleType

from largebatch._version import __version__
from largebatch.cli import signals
from largebatch.cli.exits import CommandError
from largebatch.errors import Terminated

__all__ = ["COMMANDS", "EXAMPLES", "EXIT_CODES", "build_parser", "commands", "main"]

COMMANDS = (
    "train",
    "eval",
    "recipes",
    "data_check",
    "data_prepare",
    "sweep",
    "study_report",
    "critical_batch",
    "advise",
    "simulate",
)
"""The subcommand modules of this package, in the order of ``largebatch --help``."""

GROUPS = {"data": ("data set tools: check, prepare", "Data set tools: check, prepare.")}
"""Help and description of the commands that group subcommands (``data check``, ``data prepare``)."""

DESCRIPTION = __doc__.splitlines()[0]


def commands() -> list[ModuleType]:
    """The subcommand modules, imported on first use (after main() has installed its SIGTERM
    handler: they import omegaconf and the library's torch-free modules, about 0.1 s)."""
    return [importlib.import_module(f"{__name__}.{name}") for name in COMMANDS]


def __getattr__(name: str):
    # EXAMPLES and EXIT_CODES are assembled from the subcommand modules when first asked for, so that
    # `import largebatch.cli` stays light (module docstring).
    if name == "EXAMPLES":
        return {command.NAME: command.EXAMPLES for command in commands()}
    if name == "EXIT_CODES":
        return {command.NAME: command.EXIT_STATUS for command in commands()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _add_command(sub, command: ModuleType) -> None:
    """The subcommand's parser, whose --help shows a description, examples and the exit statuses."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in command.EXAMPLES) + "\n\nexit status: " + command.EXIT_STATUS
    help = command.HELP
    parser = sub.add_parser(
        command.NAME.split()[-1],
        help=help,
        description=getattr(command, "DESCRIPTION", "") or help[:1].upper() + help[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_arguments(parser)
    parser.set_defaults(func=command.run, keep_sigterm_handler=getattr(command, "KEEP_SIGTERM_HANDLER", False))


def build_parser() -> argparse.ArgumentParser:
    """The ``largebatch`` parser: every module of :data:`COMMANDS` as a subcommand (``data check``
    under ``data``); ``args.func`` is the chosen subcommand's ``run``."""
    parser = argparse.ArgumentParser(prog="largebatch", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"largebatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    groups = {}
    for command in commands():
        *group, _ = command.NAME.split()
        where = sub
        if group:
            name = group[0]
            if name not in groups:
                help, description = GROUPS[name]
                grouping = sub.add_parser(name, help=help, description=description)
                groups[name] = grouping.add_subparsers(dest=f"{name}_command", required=True)
            where = groups[name]
        _add_command(where, command)
    return parser


def _run(args: argparse.Namespace) -> int:
    """The chosen subcommand; an exception it names as bad input or a failure is one line (exits.py)."""
    try:
        return args.func(args)
    except CommandError as err:
        return err.report()


def main(argv: list[str] | None = None) -> int:
    """The ``largebatch`` command. For ``train``, SIGTERM and SIGINT keep their contract from the
    first instant to the exit (docs/reliability.md): one line saying where the run stands, exit
    status 75 after SIGTERM (0 when the run had finished), 130 after Ctrl-C."""
    signals.reset()
    previous = signal.signal(signal.SIGTERM, signals.raise_terminated)  # first: torch's import takes seconds
    command = "train"
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        if not args.keep_sigterm_handler:
            signal.signal(signal.SIGTERM, previous)
        code = _run(args)
    except BrokenPipeError:  # the reader went away (`largebatch recipes NAME | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        code = 0
    except (Terminated, KeyboardInterrupt) as sig:
        code = signals.report_stop(sig, command)
    if signal.getsignal(signal.SIGTERM) is signals.raise_terminated:
        signal.signal(signal.SIGTERM, signals.exit_with(code))
    return code
