"""CSV / JSONL manifests: one row per video.

CSV needs a header with at least ``path`` and ``label``; optional ``start``, ``end`` (seconds, a
decimal or ``num/den``) and ``caption``. JSONL has one object per line with the same keys.
Labels are integer ids, or class names mapped through ``data.label_map`` (or, without one, sorted
unique names). Relative paths are resolved under ``data.root`` when set, else next to the manifest.
With ``data.root`` set, no path may resolve outside it (``..``, absolute paths, symlinks): the row
is refused with a :class:`~tubelet.errors.DataError` naming it.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

from tubelet.data.datasets.base import Sample
from tubelet.data.datasets.folders import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from tubelet.data.datasets.labels import LabelMap, load_label_map
from tubelet.errors import DataError

__all__ = ["not_a_manifest", "read_manifest", "resolve_under_root"]

MANIFEST_FORMATS = "CSV or JSONL with path,label rows"
_SNIFF_BYTES = 8192


def not_a_manifest(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` cannot be a manifest (a video, an image, binary bytes), or None.

    A video handed over where a manifest is expected is a common slip (``data.train=clip.mp4``); the CSV
    reader would fail on it with a decoding error that names neither the file nor the fix.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    fix = "use data.kind=folders with a folder of class subfolders, or list the file in a manifest"
    if suffix in VIDEO_EXTENSIONS:
        return f"looks like a video file, not a manifest ({MANIFEST_FORMATS}); {fix}"
    if suffix in IMAGE_EXTENSIONS:
        return f"looks like an image file, not a manifest ({MANIFEST_FORMATS}); {fix}"
    try:
        with p.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return None  # a missing or unreadable file is reported where it is opened
    try:  # incremental: a multi-byte character cut at the end of the sample is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        binary = b"\x00" in head
    except UnicodeDecodeError:
        binary = True
    if binary:
        return f"is a binary file (a video?), not a manifest ({MANIFEST_FORMATS}); {fix}"
    return None


def resolve_under_root(path: str, root: Path | None, base: Path, where: str) -> str:
    """Resolve ``path`` against ``root`` (or ``base``); refuse paths that escape ``root``."""
    p = Path(os.path.expanduser(path))
    full = p if p.is_absolute() else (root if root is not None else base) / p
    if root is not None:
        real_root = root.resolve()
        real = full.resolve()
        if real != real_root and real_root not in real.parents:
            raise DataError(f"{where}: path '{path}' escapes data.root '{root}'")
    return str(full)


def _seconds(value: Any, where: str, key: str) -> Fraction | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        return Fraction(str(value).strip()).limit_denominator(10**6) if not isinstance(value, Fraction) else value
    except (ValueError, ZeroDivisionError):
        raise DataError(f"{where}: '{key}' must be seconds (e.g. 1.5 or 3/2), got '{value}'") from None


def _rows(path: Path) -> list[tuple[str, dict]]:
    reason = not_a_manifest(path)
    if reason is not None:
        raise DataError(f"{path} {reason}")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object per line")
            rows.append((where, obj))
        return rows
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise DataError(f"{path}: CSV manifest needs a header with 'path' and 'label' columns, got {reader.fieldnames}")
    for n, row in enumerate(reader, start=2):
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        rows.append((f"{path}:{n}", row))
    return rows


def read_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    label_map: str | os.PathLike | LabelMap | None = None,
    row_errors: list[tuple[str, str]] | None = None,
) -> tuple[list[Sample], LabelMap | None]:
    """Parse a manifest into :class:`Sample` rows and the label map used (``None`` for integer labels).

    A bad row raises :class:`DataError` naming it; with ``row_errors`` given, bad rows are appended
    to it as ``(where, message)`` and skipped instead (``tubelet data check``).
    """
    mpath = Path(path)
    if not mpath.is_file():
        raise DataError(f"manifest '{mpath}' not found")
    root_p = Path(root) if root is not None else None
    raw = _rows(mpath)
    lmap = load_label_map(label_map) if isinstance(label_map, (str, os.PathLike)) else label_map

    def is_int(v: Any) -> bool:
        return isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())

    names = [str(r.get("label")).strip() for _, r in raw if r.get("label") is not None and not is_int(r.get("label"))]
    if names and lmap is None:
        lmap = LabelMap.from_names(names)
    samples = []
    for where, r in raw:
        try:
            samples.append(_row_sample(where, r, lmap, root_p, mpath, is_int))
        except DataError as exc:
            if row_errors is None:
                raise
            row_errors.append((where, str(exc)))
    if not samples and row_errors is None:
        raise DataError(f"manifest '{mpath}' has no rows")
    return samples, lmap


def _row_sample(where: str, r: dict, lmap: LabelMap | None, root_p: Path | None, mpath: Path, is_int) -> Sample:
    """One manifest row as a :class:`Sample`; :class:`DataError` naming the row when it is invalid."""
    p = r.get("path")
    if p is None or str(p).strip() == "":
        raise DataError(f"{where}: missing 'path'")
    lab = r.get("label")
    if lab is None or str(lab).strip() == "":
        raise DataError(f"{where}: missing 'label'")
    if is_int(lab):
        label = int(lab)
    else:
        if lmap is None or str(lab).strip() not in lmap:
            raise DataError(f"{where}: label '{lab}' is not in the label map")
        label = lmap.id(str(lab).strip())
    start, end = _seconds(r.get("start"), where, "start"), _seconds(r.get("end"), where, "end")
    if start is not None and end is not None and end <= start:
        raise DataError(f"{where}: end ({end}) must be after start ({start})")
    caption = r.get("caption")
    return Sample(
        path=resolve_under_root(str(p).strip(), root_p, mpath.parent, where),
        label=label,
        start=start,
        end=end,
        caption=None if caption in (None, "") else str(caption),
        source=where,
    )
