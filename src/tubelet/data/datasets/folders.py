"""Class folders: ``root/<class_name>/<video or item>``, classes sorted by name (or from a label map)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tubelet.data.datasets.base import Sample
from tubelet.data.datasets.labels import LabelMap, load_label_map
from tubelet.errors import DataError

__all__ = ["VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "scan_class_folders"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def scan_class_folders(
    root: str | os.PathLike,
    accept: Callable[[Path], bool],
    label_map: str | os.PathLike | LabelMap | None = None,
) -> tuple[list[Sample], LabelMap]:
    """One :class:`Sample` per entry of ``root/<class>/`` that ``accept`` keeps, sorted by class then name."""
    rp = Path(root)
    if not rp.is_dir():
        raise DataError(f"class-folder root '{rp}' is not a directory")
    classes = sorted(d.name for d in rp.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"'{rp}' has no class sub-folders (expected root/<class_name>/<files>)")
    lmap = load_label_map(label_map) if isinstance(label_map, (str, os.PathLike)) else label_map
    if lmap is None:
        lmap = LabelMap(classes)
    samples = []
    for c in classes:
        if c not in lmap:
            raise DataError(f"'{rp / c}': class '{c}' is not in the label map")
        for f in sorted((rp / c).iterdir()):
            if not f.name.startswith(".") and accept(f):
                samples.append(Sample(path=str(f), label=lmap.id(c), source=str(rp / c)))
    if not samples:
        raise DataError(f"'{rp}': no samples found under the class folders")
    return samples, lmap


def _file_or_link(p: Path) -> bool:
    # A dangling symlink stays an entry, so it fails as a missing file instead of vanishing from the set.
    return p.is_file() or (p.is_symlink() and not p.exists())


def is_video_file(p: Path) -> bool:
    """A class-folder entry of kind ``folders``: a video file, or a link named like one."""
    return p.suffix.lower() in VIDEO_EXTENSIONS and _file_or_link(p)


def is_image_file(p: Path) -> bool:
    """A class-folder entry of kind ``images``: an image file, or a link named like one."""
    return p.suffix.lower() in IMAGE_EXTENSIONS and _file_or_link(p)
