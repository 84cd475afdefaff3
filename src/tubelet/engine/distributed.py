"""Distributed helpers of the engine (the strategies themselves are Lightning's).

The collectives themselves (gathers, sums) are in ``tubelet.core.dist``.

* ``strategy_from_recipe``: the Lightning strategy object for ``trainer.strategy`` with the
  collective timeout ``trainer.collective_timeout_s`` (a rank that dies or hangs ends the others
  with an error instead of a silent hang).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


from tubelet.errors import ConfigError
__all__ = ["report_dead_peers", "strategy_from_recipe"]


def strategy_from_recipe(name: str, timeout_s: float) -> Any:
    """``"ddp"`` -> ``DDPStrategy(timeout=...)`` (``"ddp_find_unused_parameters_true"`` also sets
    ``find_unused_parameters``), ``"fsdp"`` -> ``FSDPStrategy(timeout=...)``; other names go to
    Lightning's strategy registry as they are (``"auto"``: one process; without the timeout)."""
    if timeout_s <= 0:
        raise ConfigError(f"trainer.collective_timeout_s must be positive, got {timeout_s}")
    timeout = timedelta(seconds=timeout_s)
    if name in ("ddp", "ddp_find_unused_parameters_true"):
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(timeout=timeout, find_unused_parameters=name.endswith("_true"))
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(timeout=timeout)
    return name


def report_dead_peers(message) -> None:
    """Make rank 0 say why it ends when Lightning's launcher finds a dead child process.

    With the subprocess launcher, rank 0 spawned the other ranks and a watchdog thread polls them
    every 5 s; when one has died it SIGKILLs every process, rank 0 included. If that happens before
    rank 0's next collective fails (it was loading data or writing a checkpoint), the run ends with
    no word from tubelet. ``message(pid, returncode) -> str`` is printed to stderr first. A no-op when
    the launcher's watchdog is not where this Lightning version keeps it.
    """
    import sys

    try:
        from lightning.fabric.strategies.launchers import subprocess_script as launcher

        observer = launcher._ChildProcessObserver
        terminate = observer._terminate_all
    except (ImportError, AttributeError):
        return
    original = getattr(terminate, "__wrapped__", terminate)

    def _terminate_all(self) -> None:
        dead = [p for p in self._child_processes if p.returncode]
        for p in dead:
            print(message(p.pid, p.returncode), file=sys.stderr, flush=True)
        original(self)

    _terminate_all.__wrapped__ = original
    observer._terminate_all = _terminate_all

