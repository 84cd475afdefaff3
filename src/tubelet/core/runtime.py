"""Thread policy: the intra-op threads torch may use beside the data workers."""

from __future__ import annotations

import os

import torch


def set_threads(num_threads: int | None, num_workers: int) -> int:
    """``num_threads`` when given, else all cores minus the data workers (at least one); returns it."""
    n = num_threads or max(1, (os.cpu_count() or 1) - int(num_workers))
    torch.set_num_threads(n)
    return n
