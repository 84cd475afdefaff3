"""The exceptions tubelet raises on bad input. Each message names the file, key or value at fault."""

from __future__ import annotations


class TubeletError(Exception):
    """Base of every error tubelet raises on purpose."""


class ConfigError(TubeletError, ValueError):
    """A recipe or override is invalid: unknown key, wrong type or bad value."""


class CheckpointError(TubeletError):
    """A checkpoint is missing, truncated, has mismatched keys or shapes, or would run code."""


class VideoError(TubeletError):
    """A video (or frame folder, or image) cannot be read. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(TubeletError):
    """A dataset or manifest is invalid, or too many samples failed to load."""


class WriteError(TubeletError, OSError):
    """A file cannot be written: the disk is full, the file system is read-only, or the folder is not
    writable. An ``OSError`` too (with the original ``errno``), so that code catching ``OSError`` still does;
    ``path`` names the file."""

    def __init__(self, path: object, reason: str, errno: int | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
        self.errno = errno

    def __str__(self) -> str:  # OSError's own formatting would print "[Errno ...] None"
        return f"{self.path}: {self.reason}"
