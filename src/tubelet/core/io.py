"""Atomic file writes (temporary file, fsync, ``os.replace``) and safetensors files.

A write that the file system refuses (disk full, quota, read-only, no permission) raises
:class:`~tubelet.errors.WriteError` naming the file and what to do, instead of a bare ``OSError``; the
file that was there before is left as it was.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch

from tubelet.errors import TubeletError, WriteError

# What the file system says, put as what the user can do about it.
_WRITE_REASONS = {
    errnos.ENOSPC: "no space left on the device (disk full); free space there or write to another disk",
    errnos.EDQUOT: "disk quota exceeded; free space there or write to another disk",
    errnos.EROFS: "the file system is read-only; write to a writable folder",
    errnos.EACCES: "permission denied: the folder is not writable by this user; write to a writable folder",
    errnos.EPERM: "operation not permitted: the folder is not writable by this user; write to a writable folder",
    errnos.EFBIG: "the file is too large for this file system; write to another disk",
}
WRITE_ERRNOS = frozenset(_WRITE_REASONS)


def write_error(path: str | Path, exc: OSError) -> WriteError:
    """The one-line :class:`WriteError` for ``exc`` raised while writing ``path``."""
    if isinstance(exc, WriteError):
        return exc
    reason = _WRITE_REASONS.get(exc.errno) if exc.errno is not None else None
    if reason is None:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return WriteError(path, f"cannot write: {reason}", exc.errno)


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` inside the block (a write of ``path``) into a :class:`WriteError` naming it."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from exc


class _Sink:
    """The file object handed to a writer callback: it remembers the ``OSError`` of a failed write, because
    ``torch.save`` turns it into an unrelated ``RuntimeError`` ("unexpected pos ...")."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        with contextlib.suppress(OSError):  # not every filesystem can sync a folder
            os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (``.<name>.<8 hex>.tmp``, :data:`TEMP_FILE_RE`), one per writer,
    so that two writers of one file never share it; :func:`remove_temp_files` finds those a kill left."""
    path = Path(path)
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, then ``os.replace``.
    A refused write raises :class:`WriteError` and leaves ``path`` as it was."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    sink: _Sink | None = None
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # on a read-only folder even the cleanup is refused
            tmp.unlink(missing_ok=True)
        cause = exc if isinstance(exc, OSError) else sink.error if sink is not None else None
        if cause is not None and isinstance(exc, Exception) and not isinstance(exc, TubeletError):
            raise write_error(path, cause) from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write`` of ``text`` as UTF-8."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A flat ``name -> tensor`` mapping serialised as a safetensors file."""
    from safetensors.torch import save

    return save(_plain_tensors(tensors), metadata=metadata)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a flat ``name -> tensor`` mapping as safetensors."""
    data = safetensors_bytes(tensors, metadata)
    return atomic_write(path, lambda f: f.write(data))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints may be larger than memory allows twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ``atomic_write``'s temporary files: ``.<target name>.<8 hex>.tmp``
TEMP_FILE_RE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def remove_temp_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove the temporary files that writes killed before their rename left in ``folder`` (and in its
    subfolders with ``recursive``); call it only when no write into ``folder`` is under way."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*.tmp") if recursive else folder.iterdir()
    removed = sorted(p for p in found if TEMP_FILE_RE.fullmatch(p.name) and p.is_file())
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header (empty when it has none); reads no tensor data."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of a safetensors file, from its header only (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights) and needs contiguous CPU data.
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        full = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if ptr in seen or not full:
            t = t.contiguous().clone()
        if ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out
