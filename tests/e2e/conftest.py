import pytest

import clirun


@pytest.fixture(autouse=True)
def _fork_largebatch_commands(monkeypatch):
    """Every ``python -m largebatch`` command an end-to-end test runs, directly or through the study
    commands (sweep trials, critical-batch branches, the advise probe), is forked from the test
    process instead of started in a fresh interpreter (tests/clirun.py)."""
    clirun.fork_largebatch_commands(monkeypatch)
