"""The project's input error and exit statuses, importable from every layer (docs/architecture.md)
without importing torch: the config, the user-plugin registry and the data checks raise
:class:`ConfigError`; the command line turns it into :data:`EXIT_BAD_INPUT`."""

EXIT_OK = 0
EXIT_FAILED = 1
"""A failure while running (a worker's error, a non-finite stop)."""
EXIT_BAD_INPUT = 2
"""Bad input found before any worker starts: unknown key, wrong type, contradiction, missing data."""
EXIT_DIVERGED = 3
"""The training loss or the gradients became non-finite and the run stopped (a NaN or Inf loss,
``train.nonfinite_policy=stop``, more than ``train.max_nonfinite_steps`` skipped steps). ``largebatch
train`` exits with it only where the environment sets :data:`DIVERGED_STATUS_ENV` to ``1``, as the
study's launcher (:mod:`largebatch.study.launch`) does to tell a diverged trial or branch from a failed
one without reading its log; elsewhere such a run fails with :data:`EXIT_FAILED`, as documented."""
DIVERGED_STATUS_ENV = "LARGEBATCH_EXIT_DIVERGED"
"""The environment variable that turns on :data:`EXIT_DIVERGED` for ``largebatch train``."""
DIVERGED_ERRORS = ("NonFiniteGradient", "FloatingPointError")
"""The exception types a diverged run's worker raises (``largebatch.train.guard.NonFiniteGradient``, a
``FloatingPointError`` for a non-finite loss), as the launcher's failure reports name them."""
EXIT_PREEMPTED = 75
"""Stopped by SIGTERM after writing a checkpoint; continue with ``--resume auto`` (EX_TEMPFAIL: try again)."""


class ConfigError(ValueError):
    """A config key has a value that is unknown, of the wrong type, or contradicts another key."""


class Terminated(BaseException):
    """SIGTERM reached the launching process of ``largebatch train`` while no worker runs yet (or
    torch's elastic agent has not installed its own handler): raised by the command line's handler
    so that the run stops with one line and the right exit status (docs/reliability.md)."""
