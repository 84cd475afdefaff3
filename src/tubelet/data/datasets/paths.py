"""Keeping dataset paths inside ``data.root``.

Symlinks inside the root are followed: a linked video, class folder or frame folder works as long
as what it points to is inside the root too. A path is refused when the file the OS would open lies
outside the root, and the message names the cause: the link that leads out ("'X' is a symlink to
'Y', outside data.root 'Z'"), or the path itself (``..``, an absolute path elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path

from tubelet.errors import DataError

__all__ = ["outside_root", "check_under_root", "resolve_under_root"]


def _inside(real: Path, real_root: Path) -> bool:
    return real == real_root or real_root in real.parents


def outside_root(path: str | os.PathLike, root: str | os.PathLike, written: str | None = None,
                 real_root: Path | None = None) -> str | None:
    """Why ``path`` (relative to the working directory, as it will be opened) lies outside ``root``;
    ``None`` when what it names, after following every symlink, is inside ``root``. ``written``: the
    path as the user wrote it (a manifest row's), named when the path itself leads out. ``real_root``:
    ``root`` already resolved, for callers that check many paths (the frames of a folder)."""
    p, r = Path(path), Path(root)
    real_root = real_root if real_root is not None else r.resolve()
    if _inside(p.resolve(), real_root):
        return None
    abs_p = p if p.is_absolute() else Path.cwd() / p
    off = len(abs_p.parts) - len(p.parts)  # leading parts of abs_p that come from the working directory
    # Walk the path as written from the root down: the first link whose target is outside is the
    # cause. Links above the root (the root itself may be one) are not the dataset's business.
    for base in (r if r.is_absolute() else Path.cwd() / r, real_root):
        if abs_p.parts[: len(base.parts)] != base.parts:
            continue
        for i in range(len(base.parts) + 1, len(abs_p.parts) + 1):
            link = Path(*abs_p.parts[:i])
            if link.is_symlink() and not _inside(link.resolve(), real_root):
                shown = Path(*p.parts[: i - off]) if i > off else link
                return f"'{shown}' is a symlink to '{link.resolve()}', outside data.root '{root}'"
        break
    return f"path '{written if written is not None else path}' escapes data.root '{root}'"


def check_under_root(path: str | os.PathLike, root: str | os.PathLike | None, where: str) -> None:
    """:class:`DataError` naming ``where`` when ``path`` (as it will be opened) lies outside ``root``."""
    if root is not None:
        reason = outside_root(path, root)
        if reason is not None:
            raise DataError(f"{where}: {reason}")


def resolve_under_root(path: str, root: Path | None, base: Path, where: str) -> str:
    """``path`` of a manifest row, joined to ``root`` (or to ``base``, the manifest's folder, without
    one) unless absolute; :class:`DataError` naming ``where`` when it lies outside ``root``."""
    p = Path(os.path.expanduser(path))
    full = p if p.is_absolute() else (root if root is not None else base) / p
    if root is not None:
        reason = outside_root(full, root, written=path)
        if reason is not None:
            raise DataError(f"{where}: {reason}")
    return str(full)
