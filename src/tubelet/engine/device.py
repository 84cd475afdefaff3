"""Which device ``trainer.accelerator`` names and whether ``trainer.precision`` runs on it.

Both are checked before anything is built (``fit`` and ``evaluate`` call them first), so that a GPU
recipe run on a laptop fails in one line naming the key instead of deep inside Lightning or a kernel.
"""

from __future__ import annotations

import functools
import os
import time

import torch

from tubelet.errors import ConfigError

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
# float16 autocast and float16 weights need GPU kernels; bfloat16 runs on CPUs too.
GPU_ONLY_PRECISIONS = ("16-mixed", "16-true")


def device_type(accelerator: str) -> str:
    """``cpu``, ``cuda`` or ``mps`` for ``trainer.accelerator`` (``auto``: CUDA when visible, else the CPU).
    Asking only whether CUDA is there does not initialise it, so processes forked later stay clean."""
    name = str(accelerator).lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA device is visible; "
                              "trainer.accelerator=cpu or auto runs on the CPU")
        return "cuda"
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("trainer.accelerator=mps but MPS is not available; "
                              "trainer.accelerator=cpu or auto runs on the CPU")
        return "mps"
    raise ConfigError(f"trainer.accelerator={accelerator} is not one of {', '.join(ACCELERATORS)}")


def resolve_device(accelerator: str) -> torch.device:
    """The ``torch.device`` that ``trainer.accelerator`` names (the current CUDA device for a GPU)."""
    kind = device_type(accelerator)
    return torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device(kind)


def check_precision(precision: str, kind: str) -> None:
    """Refuse a float16 precision on the CPU, where Lightning and autocast do not run it."""
    if kind == "cpu" and precision in GPU_ONLY_PRECISIONS:
        raise ConfigError(f"trainer.precision={precision} is not supported on CPU (float16 needs a GPU); "
                          "use trainer.precision=bf16-mixed or 32-true")


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for testing at ``trainer.precision`` (None: float32)."""
    if precision == "auto":  # resolve first (with_resolved_precision): auto must not silently mean fp32
        raise ConfigError("trainer.precision=auto has not been resolved for this device")
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision in GPU_ONLY_PRECISIONS:
        return torch.float16
    return None


def check_trainer_device(accelerator: str, precision: str) -> str:
    """Both checks of a trainer section; returns the device type."""
    kind = device_type(accelerator)
    check_precision(precision, kind)
    return kind


# trainer.precision=auto takes bf16-mixed on a CPU whose bf16 matmul is at least this much faster than its
# fp32 one (Zen 4 ~2.2x, Xeon with AMX ~5-7x), else 32-true (Xeon without AMX ~0.5x): docs/engine.md
BF16_MIN_SPEEDUP = 1.2


@functools.lru_cache(maxsize=None)
def bf16_matmul_speedup(size: int = 512, repeats: int = 7) -> float:
    """fp32 time over bf16 time of a ``size`` x ``size`` matmul on this CPU at the current thread count:
    medians of ``repeats`` alternating runs, so that a neighbour's load hits both alike (about 0.1 s)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    times: dict[torch.dtype, list[float]] = {d: [] for d in pairs}
    for _ in range(repeats + 1):  # the first round warms the kernels up and is dropped
        for dtype, (x, y) in pairs.items():
            t0 = time.perf_counter()
            for _ in range(4):
                torch.mm(x, y)
            times[dtype].append(time.perf_counter() - t0)
    med = {d: sorted(v[1:])[len(v[1:]) // 2] for d, v in times.items()}
    return med[torch.float32] / med[torch.bfloat16]


def resolve_precision(precision: str, kind: str) -> tuple[str, str]:
    """``(precision, why)``: ``auto`` becomes the fastest precision that trains as well as fp32 on this device
    (bf16-mixed, whose loss curve equals fp32's on the synthetic set, where its matmuls are faster; else
    32-true); any other value is returned as it is, with ``why`` empty."""
    if precision != "auto":
        return precision, ""
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", "this CUDA device supports bf16"
        return "32-true", "this CUDA device has no bf16"
    if kind != "cpu":
        return "32-true", f"no bf16 measurement on {kind}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # each process would measure on its own and could pick another precision than its peers
        raise ConfigError("trainer.precision=auto measures this machine's matmuls, which every one of the "
                          f"{os.environ['WORLD_SIZE']} processes would do alone: set trainer.precision to "
                          "bf16-mixed or 32-true")
    r = bf16_matmul_speedup()
    pick = "bf16-mixed" if r >= BF16_MIN_SPEEDUP else "32-true"
    return pick, f"bf16 matmul {r:.2f}x fp32 on this CPU ({'at least' if r >= BF16_MIN_SPEEDUP else 'below'} {BF16_MIN_SPEEDUP}x)"


def with_resolved_precision(recipe, log=None):
    """``recipe`` with ``trainer.precision=auto`` resolved for its accelerator (unchanged otherwise);
    ``log(line)`` hears what was chosen and why."""
    import dataclasses

    t = recipe.trainer
    if t.precision != "auto":
        return recipe
    precision, why = resolve_precision("auto", device_type(t.accelerator))
    if log is not None:
        log(f"trainer.precision=auto: {precision} ({why})")
    return dataclasses.replace(recipe, trainer=dataclasses.replace(t, precision=precision))
