"""Alternating tasks: one training stream whose batches take turns between datasets (UTT's unified training,
arXiv 2203.15175, METHODS.md section 9: even iterations SOT, odd MOT, each with its own data and its own
optimiser step).

Each task keeps its own data: a per-epoch permutation of its dataset, seeded by ``(seed, epoch, task)``,
walked batch by batch, as its own loader would. Batch ``k`` of the stream comes whole from task
``k mod T`` (T tasks in the order given), so a batch never mixes tasks and every process takes the same
task at the same step. The order is a pure function of ``(seed, epoch, position)``: a resumed run,
restarted at a position by the engine's resumable sampler, continues the alternation exactly.

Positions: block ``q`` (``batch_size`` consecutive positions) is task ``q mod T``'s block ``q // T``; a
task shorter than the longest wraps round its permutation within the epoch. With several processes,
:meth:`order` hands process ``r`` at step ``k`` the block ``T ((k // T) world + r) + k mod T``.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch.utils.data import Dataset

from tubelet.errors import ConfigError

__all__ = ["AlternatingTasks"]


class AlternatingTasks(Dataset):
    """``tasks``: name -> map-style dataset, alternated in this order; ``ds[i]`` is the sample of position
    ``i`` (see the module docstring) with ``"task"`` set to the task's index in ``tasks``."""

    def __init__(self, tasks: Mapping[str, Dataset], batch_size: int, seed: int = 0) -> None:
        if len(tasks) < 2:
            raise ConfigError(f"alternating tasks need at least two datasets, got {len(tasks)}")
        self.names = list(tasks)
        self.tasks = [tasks[n] for n in self.names]
        self.sizes = [len(t) for t in self.tasks]  # type: ignore[arg-type]
        if min(self.sizes) < 1:
            raise ConfigError(f"alternating tasks: task '{self.names[self.sizes.index(0)]}' has no samples")
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0
        self.blocks = math.ceil(max(self.sizes) / self.batch_size)  # batches per task per epoch
        self._perms: dict[int, list[int]] = {}
        self._perm_epoch = -1

    def __len__(self) -> int:
        return len(self.tasks) * self.blocks * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for t in self.tasks:
            if hasattr(t, "set_epoch"):
                t.set_epoch(epoch)

    def _perm(self, task: int) -> list[int]:
        if self._perm_epoch != self.epoch:
            self._perms, self._perm_epoch = {}, self.epoch
        if task not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 101 + task)
            self._perms[task] = torch.randperm(self.sizes[task], generator=g).tolist()
        return self._perms[task]

    def locate(self, i: int) -> tuple[int, int]:
        """``(task, index in the task's dataset)`` of position ``i`` in the current epoch."""
        T, bs = len(self.tasks), self.batch_size
        q, j = divmod(int(i), bs)
        task, block = q % T, q // T
        return task, self._perm(task)[(block * bs + j) % self.sizes[task]]

    def __getitem__(self, i: int) -> dict:
        task, index = self.locate(i)
        sample = self.tasks[task][index]
        if not isinstance(sample, dict):
            raise ConfigError(f"alternating tasks: task '{self.names[task]}' returned {type(sample).__name__}, "
                              "not a sample dict")
        return {**sample, "task": task}

    def steps(self, world: int = 1) -> int:
        """Batches per process per epoch: each task's blocks shared out over ``world`` processes."""
        return len(self.tasks) * math.ceil(self.blocks / world)

    def order(self, rank: int = 0, world: int = 1) -> list[int]:
        """Process ``rank``'s positions for one epoch, batch after batch."""
        T, bs = len(self.tasks), self.batch_size
        out: list[int] = []
        for k in range(self.steps(world)):
            block = ((k // T) * world + rank) % self.blocks
            q = T * block + k % T
            out.extend(range(q * bs, (q + 1) * bs))
        return out
