"""The Kinetics annotation CSV (``label,youtube_id,time_start,time_end,split``, as in the official
Kinetics-400/600/700 ``train.csv``, ``validate.csv`` and ``test.csv``) over a folder of downloaded clips.

A row names a 10 s excerpt of a YouTube video; the downloaders save it, already cut, as
``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``, either flat in one folder or in one folder per
class. So a row's file is looked up under the videos root as that name, then under ``{label}/`` (and
``{label with _ for spaces}/``, the folder names some tools write), each with ``.mp4``, ``.mkv``,
``.webm`` or ``.avi``. The whole file is the clip: ``time_start``/``time_end`` only name it; they
are not a sub-range of the file. ``split`` is not read (the file you give is the split).
"""

from __future__ import annotations

from pathlib import Path

from tubelet.errors import DataError

__all__ = ["KINETICS_COLUMNS", "KINETICS_EXTENSIONS", "is_kinetics_header", "kinetics_candidates", "find_kinetics_video"]

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
KINETICS_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")


def is_kinetics_header(fields: list[str] | None) -> bool:
    """Whether a CSV header is the Kinetics one (its columns, in any order; others such as ``split`` allowed)."""
    return fields is not None and "path" not in fields and set(KINETICS_COLUMNS) <= set(fields)


def _whole_seconds(row: dict, key: str, where: str) -> int:
    v = str(row.get(key) or "").strip()
    if not v.isdigit():
        raise DataError(f"{where}: '{key}' must be whole seconds (e.g. 14), got '{v}'")
    return int(v)


def kinetics_candidates(row: dict, where: str) -> list[str]:
    """The relative paths a row's clip may have, in the order they are tried."""
    yid = str(row.get("youtube_id") or "").strip()
    if not yid:
        raise DataError(f"{where}: missing 'youtube_id'")
    stem = f"{yid}_{_whole_seconds(row, 'time_start', where):06d}_{_whole_seconds(row, 'time_end', where):06d}"
    label = str(row.get("label") or "").strip()
    folders = [""] + list(dict.fromkeys(d for d in (label, label.replace(" ", "_")) if d))
    return [f"{d}/{stem}{ext}" if d else stem + ext for d in folders for ext in KINETICS_EXTENSIONS]


def find_kinetics_video(row: dict, where: str, folder: Path) -> tuple[str, bool]:
    """``(relative path, found)``: the first candidate that exists under ``folder``, else the first
    candidate (the downloader's name) with ``found`` false."""
    cands = kinetics_candidates(row, where)
    for c in cands:
        if (folder / c).is_file():
            return c, True
    return cands[0], False
