"""Thread policy: the cores other processes keep busy are left to them (benchmarks/contention.py)."""

import itertools

from tubelet.core.runtime import auto_threads, runnable_elsewhere


def test_runnable_elsewhere_is_the_median_less_this_process():
    reads = itertools.cycle(["1.0 1.0 1.0 2/80 7", "1.0 1.0 1.0 3/80 7", "1.0 1.0 1.0 2/80 7"])
    assert runnable_elsewhere(samples=3, interval_s=0, read=lambda: next(reads)) == 1
    assert runnable_elsewhere(samples=1, interval_s=0, read=lambda: "0.1 0.1 0.1 1/80 7") == 0
    assert runnable_elsewhere(samples=1, interval_s=0, read=lambda: "garbled") == 0


def test_auto_threads_leaves_busy_cores_and_workers():
    assert auto_threads(0, cores=2, busy=0) == 2  # quiet: every core
    assert auto_threads(0, cores=2, busy=1) == 1  # one competing process: one thread, no spinning partner
    assert auto_threads(1, cores=2, busy=0) == 1  # a data worker takes a core
    assert auto_threads(2, cores=2, busy=3) == 1  # never fewer than one
    assert auto_threads(0, cores=16, busy=3) == 13
