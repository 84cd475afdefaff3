"""The Lightning checkpoint plugin over tubelet's checkpoint format (``core/ckpt_format.py``): atomic
writes of safetensors weights plus a weights-only training state, loaded without unpickling code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from tubelet.core.ckpt_format import load_checkpoint, remove_checkpoint, save_checkpoint


class SafeCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` plugin: atomic safetensors + weights-only training state."""

    def __init__(self) -> None:
        self.last_saved: Path | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        self.last_saved = save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location="cpu" if map_location is None or callable(map_location) else map_location)

    def remove_checkpoint(self, path: Any) -> None:
        remove_checkpoint(path)
