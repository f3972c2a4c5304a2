import os
import sys

# Tests run on CPU: keep each process to one intra-op thread unless a test says otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))

# Property-based tests (hypothesis): the default profile is derandomized, so the suite (and CI) runs
# the same examples every time and a landing never depends on a draw; HYPOTHESIS_PROFILE=explore
# draws fresh random examples, 20x as many, to hunt for new failures (then pin them with @example).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("default", max_examples=300, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("explore", max_examples=6000, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
