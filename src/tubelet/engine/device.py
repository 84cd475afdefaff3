"""Which device ``trainer.accelerator`` names and whether ``trainer.precision`` runs on it.

Both are checked before anything is built (``fit`` and ``evaluate`` call them first), so that a GPU
recipe run on a laptop fails in one line naming the key instead of deep inside Lightning or a kernel.
"""

from __future__ import annotations

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
