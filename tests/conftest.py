import os
import sys

import pytest

# Tests run on CPU: keep each process to one intra-op thread unless a test says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# train.precision=auto picks bf16 on CPUs with AVX-512 BF16 or AMX and fp32 elsewhere; the suite's
# equivalence tolerances are fp32 ones, so it pins fp32 on every machine (spawned ranks and CLI runs
# inherit this). Tests of bf16 force it with LARGEBATCH_CPU_BF16=1 or train.precision=bf16.
os.environ.setdefault("LARGEBATCH_CPU_BF16", "0")
sys.path.insert(0, os.path.dirname(__file__))

# Property-based tests (hypothesis): the default profile is derandomized, so the suite (and CI) runs
# the same examples every time and a landing never depends on a draw; HYPOTHESIS_PROFILE=explore
# draws fresh random examples, 20x as many, to hunt for new failures (then pin them with @example).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default",
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "explore",
    max_examples=6000,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """On a whole-suite run (no paths given), fail if a test file yields no tests. pytest's default
    ``norecursedirs`` skips any folder named ``dist`` or ``build``: our distributed tests, then in
    ``tests/dist``, never ran in the whole-suite run that way (found 2026-12-02)."""
    if config.args_source != config.ArgsSource.TESTPATHS:
        return
    from pathlib import Path

    here = Path(__file__).parent
    collected = {Path(str(item.path)).resolve() for item in items}
    missing = sorted(str(p.relative_to(here.parent)) for p in here.rglob("test_*.py") if p.resolve() not in collected)
    if missing:
        raise pytest.UsageError(
            f"test files that collected no tests: {', '.join(missing)} (a folder named like "
            "one of pytest's norecursedirs, e.g. dist/ or build/, is skipped; rename it)"
        )
