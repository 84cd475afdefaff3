"""How torch's idle intra-op threads wait, chosen before torch loads its OpenMP runtime.

libgomp (the OpenMP runtime of torch's CPU wheels) reads ``OMP_WAIT_POLICY`` once, when it loads, and
by default spins at every barrier before sleeping. With as many threads as cores, one other busy
process on the machine is enough to deschedule one of them: the other then spins through its time
slice at each of the thousands of barriers of a training step, and training runs many times slower
(``benchmarks/contention.py`` measures it). A passive policy sleeps at once and costs little on a quiet
machine. This module imports nothing heavy, so ``tubelet/__init__`` can apply it before torch loads.
"""

from __future__ import annotations

import os
import sys

POLICY = "PASSIVE"
KEEP = "TUBELET_KEEP_OMP_WAIT_POLICY"  # set to 1 to leave libgomp's default (spinning) policy


def apply_wait_policy() -> str | None:
    """Set ``OMP_WAIT_POLICY`` to :data:`POLICY` unless the environment sets it (or ``GOMP_SPINCOUNT``),
    asks to keep the default, or torch is already loaded (then it is too late). Returns the policy set."""
    if "torch" in sys.modules or os.environ.get(KEEP) or "OMP_WAIT_POLICY" in os.environ \
            or "GOMP_SPINCOUNT" in os.environ:
        return None
    os.environ["OMP_WAIT_POLICY"] = POLICY
    return POLICY
