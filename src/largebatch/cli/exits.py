"""The one place where an exception becomes the command's exit status and its one line on stderr.

A subcommand names, around the calls that can fail, which exceptions are bad input (exit status 2)
and which a failure while running (1)::

    with exit_statuses(bad_input(SweepError, ConfigError, KeyError), failed(RuntimeError)):
        rows = run_sweep(...)

An exception of a listed type leaves the block as :class:`CommandError`; :func:`largebatch.cli.main`
prints its line (``largebatch: error: ...``) and returns its status. The rules are tried in order,
so a rule for a subclass (``FileNotFoundError``) goes before one for its base (``OSError``). Any other
exception passes through unchanged (a traceback, exit status 1). Checks of the arguments that need
no exception return :func:`fail` directly. Stdlib only: imported before the SIGTERM handler is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from largebatch.errors import EXIT_BAD_INPUT, EXIT_FAILED


def fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    """Print ``largebatch: error: MESSAGE`` on stderr; return ``code`` (the command's exit status)."""
    print(f"largebatch: error: {message}", file=sys.stderr)
    return code


class CommandError(Exception):
    """A command stops with ``code``, ``message`` its line on stderr (None: nothing printed, e.g. on
    the torchrun workers other than rank 0). Raised by :func:`exit_statuses`; handled in ``main``."""

    def __init__(self, message: str | None, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.message, self.code = message, code

    def report(self) -> int:
        """Print the line (if any) and return the exit status."""
        if self.message is None:
            return self.code
        return fail(self.message, self.code)


def one_line(err: BaseException) -> str:
    """The message of ``err``: its text (a ``KeyError``'s argument, without the quotes ``str`` adds)."""
    return err.args[0] if isinstance(err, KeyError) and err.args else str(err)


@dataclass(frozen=True)
class Rule:
    """Exceptions of ``errors`` end the command with ``code`` and the line ``message(err)``."""

    errors: tuple[type[BaseException], ...]
    code: int
    message: Callable[[BaseException], str | None] = one_line


def bad_input(*errors: type[BaseException], message: Callable[[BaseException], str | None] = one_line) -> Rule:
    """Exit status 2: bad input (an unknown key, a missing file, a contradiction)."""
    return Rule(errors, EXIT_BAD_INPUT, message)


def failed(*errors: type[BaseException], message: Callable[[BaseException], str | None] = one_line) -> Rule:
    """Exit status 1: a failure while running (a worker, a trial or a branch failed)."""
    return Rule(errors, EXIT_FAILED, message)


@contextmanager
def exit_statuses(*rules: Rule) -> Iterator[None]:
    """Turn an exception raised in the block into :class:`CommandError` by the first rule whose types
    it matches; other exceptions (and ``BaseException``s such as SIGTERM's) pass through."""
    try:
        yield
    except CommandError:
        raise
    except Exception as err:
        for rule in rules:
            if isinstance(err, rule.errors):
                raise CommandError(rule.message(err), rule.code) from None
        raise
