"""The Lightning checkpoint plugin over tubelet's checkpoint format (``core/ckpt_format.py``): atomic
writes of safetensors weights plus a weights-only training state, loaded without unpickling code, and
the ``trainer.keep_last_k`` policy.

Lightning's ``ModelCheckpoint`` only knows the files it saved in this process (a resumed run forgets
those of the runs before), so it keeps every file and this plugin prunes: after each save, the
folder keeps the newest ``keep_last_k`` complete checkpoints of this run (by step) and removes the
older ones with their weights files. Checkpoints of another run (another recipe identity) are left
alone: they are not this run's to delete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from tubelet.core.ckpt_format import (
    checkpoint_step,
    checkpoints_newest_first,
    incomplete_reason,
    load_checkpoint,
    remove_checkpoint,
    safe_torch_load,
    save_checkpoint,
)
from tubelet.engine.resume import RUN_KEY
from tubelet.errors import CheckpointError


class SafeCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` plugin: atomic safetensors + weights-only training state; keeps the
    newest ``keep_last_k`` complete checkpoints whose run record has ``identity`` (all: None)."""

    def __init__(self, keep_last_k: int | None = None, identity: str | None = None) -> None:
        self.last_saved: Path | None = None
        self.keep_last_k = keep_last_k
        self.identity = identity
        # (path, size, mtime) -> (of this run, complete): each file is read once per process
        self._seen: dict[tuple[str, int, int], tuple[bool, bool]] = {}

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        self.last_saved = save_checkpoint(checkpoint, path)
        if self.keep_last_k is not None:
            self.prune(self.last_saved.parent)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location="cpu" if map_location is None or callable(map_location) else map_location)

    def remove_checkpoint(self, path: Any) -> None:
        remove_checkpoint(path)

    def prune(self, folder: Path, start: Path | None = None) -> list[Path]:
        """Remove this run's checkpoints older than its newest ``keep_last_k`` complete ones. ``start``:
        count from that checkpoint (the one a run resumes from) and leave the newer ones, which the
        resume passed over as damaged and which training writes again under the same names."""
        kept, removed = 0, []
        candidates = checkpoints_newest_first(folder)
        if start is not None:
            step = checkpoint_step(start)
            candidates = [p for p in candidates if checkpoint_step(p) <= step]
        for path in candidates:
            ours, complete = self._inspect(path)
            if not ours:
                continue
            if kept >= self.keep_last_k:  # type: ignore[operator]
                remove_checkpoint(path)
                removed.append(path)
            elif complete:
                kept += 1
        return removed

    def _inspect(self, path: Path) -> tuple[bool, bool]:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._seen:
            try:
                record = safe_torch_load(path, mmap=True).get(RUN_KEY) or {}
                ours = self.identity is None or record.get("identity") == self.identity
            except (CheckpointError, AttributeError):
                ours = False  # unreadable: not known to be this run's, so not deleted
            self._seen[key] = (ours, ours and incomplete_reason(path) is None)
        return self._seen[key]
