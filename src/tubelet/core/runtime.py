"""Thread policy: the intra-op threads torch may use beside the data workers and whatever else runs.

torch's CPU threads meet at a barrier at the end of every parallel region, and libgomp's threads spin
there. When another busy process takes one of the cores, each barrier waits for a descheduled thread
while its partner spins: two threads beside one competing process ran the quickstart ViT 3.7x slower
than on a quiet machine, one thread 2.2x (``benchmarks/contention.py``). A passive wait policy
(``OMP_WAIT_POLICY=PASSIVE``) helps under contention but costs a third of the quiet speed, so tubelet
keeps libgomp's default and instead leaves the cores that other processes keep busy when it starts.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch


def runnable_elsewhere(samples: int = 5, interval_s: float = 0.05,
                       read: Callable[[], str] | None = None) -> int:
    """Processes of other programs running or waiting for a CPU now: the median over ``samples`` reads
    of ``/proc/loadavg``'s running count, less this process (0 where there is no such file)."""
    def default_read() -> str:
        with open("/proc/loadavg", encoding="ascii") as f:
            return f.read()

    read = read or default_read
    counts = []
    for i in range(samples):
        try:
            running = int(read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(interval_s)
    return sorted(counts)[len(counts) // 2]


def auto_threads(num_workers: int, cores: int | None = None, busy: int | None = None) -> int:
    """All cores, less the data workers and the cores other processes keep busy, at least one."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    busy = runnable_elsewhere() if busy is None else busy
    return max(1, cores - int(num_workers) - int(busy))


def set_threads(num_threads: int | None, num_workers: int) -> int:
    """``num_threads`` when given, else :func:`auto_threads`; returns it."""
    n = num_threads or auto_threads(num_workers)
    torch.set_num_threads(n)
    return n
