"""The project's input error and exit statuses, importable from every layer (docs/architecture.md)
without importing torch: the config, the user-plugin registry and the data checks raise
:class:`ConfigError`; the command line turns it into :data:`EXIT_BAD_INPUT`."""

EXIT_OK = 0
EXIT_FAILED = 1
"""A failure while running (a worker's error, a non-finite stop)."""
EXIT_BAD_INPUT = 2
"""Bad input found before any worker starts: unknown key, wrong type, contradiction, missing data."""
EXIT_PREEMPTED = 75
"""Stopped by SIGTERM after writing a checkpoint; continue with ``--resume auto`` (EX_TEMPFAIL: try again)."""


class ConfigError(ValueError):
    """A config key has a value that is unknown, of the wrong type, or contradicts another key."""


class Terminated(BaseException):
    """SIGTERM reached the launching process of ``largebatch train`` while no worker runs yet (or
    torch's elastic agent has not installed its own handler): raised by the command line's handler
    so that the run stops with one line and the right exit status (docs/reliability.md)."""
