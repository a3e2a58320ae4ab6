"""The /proc CPU readers the benchmark uses to say where a Kafka+PostgreSQL run's CPU goes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.backends import cpu_per_thousand
from services.common import children_of, cpu_seconds

_BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)\n"


def test_cpu_seconds_counts_a_process_while_it_runs_and_its_parent_after_reaping_it():
    before_reaped = cpu_seconds([os.getpid()], reaped_children=True) - cpu_seconds([os.getpid()])
    child = subprocess.Popen([sys.executable, "-c", _BURN])
    try:
        assert child.pid in children_of(os.getpid())
        deadline = time.monotonic() + 20
        while cpu_seconds([child.pid]) < 0.3:
            assert time.monotonic() < deadline, f"the child used {cpu_seconds([child.pid])} s"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert cpu_seconds([child.pid]) == 0  # gone: counts nothing
    reaped = cpu_seconds([os.getpid()], reaped_children=True) - cpu_seconds([os.getpid()])
    # (each difference reads this process twice, a tick or two apart)
    assert reaped - before_reaped >= 0.25  # what a reaped child used counts to its parent


def test_cpu_per_thousand_images_is_the_difference_scaled():
    before = {"PredictTask": 10.0, "broker": 2.0}
    after = {"PredictTask": 12.5, "broker": 3.0, "PostgreSQL server": 1.0}
    assert cpu_per_thousand(before, after, 5000) == {"PredictTask": 0.5, "broker": 0.2}
    assert cpu_per_thousand(before, after, 0) == {}
