import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def timing_bounds(request) -> bool:
    """True only with ``--benchmark-enable``.  Bounds on wall-clock time (durations, rates,
    ratios, latencies) are checked only then: the default suite (``--benchmark-disable``)
    must not depend on how busy the machine is, so there benchmarks run once as smoke
    tests and tests that measure something keep only its non-timing checks."""
    config = request.config
    return not (config.getoption("benchmark_disable")
                and not config.getoption("benchmark_enable"))
