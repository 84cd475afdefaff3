"""Manifests: one row per video, in the formats datasets come with.

CSV needs a header with at least ``path`` and ``label``; optional ``start``, ``end`` (seconds, a
decimal or ``num/den``) and ``caption``. JSONL has one object per line with the same keys. Path
lists (PyTorchVideo / mmaction2 style) have one ``relative/path.mp4 3`` per line: the path, a space
and an integer label. The Kinetics CSV names clips by YouTube id and time (``kinetics.py``).
Labels are integer ids, or class names mapped through ``data.label_map`` (or, without one, sorted
unique names). A label that is neither (``3.5``, ``true``), a negative id, an id past the end of the
label map, or an id among rows that name their classes without a label map (where ids come from the
names' order, so an id would mean nothing definite) is a bad row named by its line. Relative paths are resolved under ``data.root`` when set, else next to the manifest.
With ``data.root`` set, no path may lie outside it: symlinks inside the root are followed, and a
row whose path leads out (``..``, an absolute path elsewhere, a symlink to outside the root) is
refused with a :class:`~tubelet.errors.DataError` naming it (``datasets/paths.py``).
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tubelet.data.datasets.base import Sample
from tubelet.data.datasets.kinetics import (
    KINETICS_COLUMNS,
    KINETICS_EXTENSIONS,
    find_kinetics_video,
    is_kinetics_header,
    kinetics_candidates,
)
from tubelet.data.datasets.folders import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from tubelet.data.datasets.labels import LabelMap, label_range_message, load_label_map
from tubelet.data.datasets.paths import resolve_under_root
from tubelet.errors import DataError

__all__ = ["not_a_manifest", "read_manifest"]

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


def _seconds(value: Any, where: str, key: str) -> Fraction | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        return Fraction(str(value).strip()).limit_denominator(10**6) if not isinstance(value, Fraction) else value
    except (ValueError, ZeroDivisionError):
        raise DataError(f"{where}: '{key}' must be seconds (e.g. 1.5 or 3/2), got '{value}'") from None


def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and _INT.fullmatch(v.strip()) is not None)


_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _label_token(lab: Any) -> int | str | None:
    """An integer id (``3``, ``"3"``), a class name (``"walk"``), or None for a value that is neither: a
    bool, a float, a number that is not whole (``"3.5"``, ``"1e3"``), a JSON list or object."""
    if isinstance(lab, bool):
        return None
    if isinstance(lab, int):
        return lab
    if isinstance(lab, str):
        text = lab.strip()
        if _INT.fullmatch(text):
            return int(text)
        return None if _NUMBER.fullmatch(text) else text
    return None


@dataclass(frozen=True)
class _Labels:
    """How a manifest's labels become ids: ``lmap`` for names; ``bound`` (and ``what`` it comes from) for
    integer ids, None when only negatives can be told wrong; ``named``: ``(name, where)`` of the first
    class-name label when the map was made from the names themselves (then no id may appear)."""

    lmap: LabelMap | None
    bound: int | None
    what: str
    named: tuple[str, str] | None


def _jsonl_rows(path: Path, lines: list[str]) -> list[tuple[str, dict]]:
    rows = []
    for n, line in enumerate(lines, start=1):
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


def _path_label_rows(path: Path, lines: list[str], bad: list[tuple[str, str]]) -> list[tuple[str, dict]]:
    """``relative/path.mp4 3`` lines; the label is the last field, so paths may hold spaces."""
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        fields = line.strip().rsplit(None, 1)
        if len(fields) != 2 or not _is_int(fields[1]):
            bad.append((where, f"{where}: expected 'path label' with an integer label, got '{line.strip()}'"))
            continue
        rows.append((where, {"path": fields[0], "label": fields[1]}))
    return rows


def _looks_like_path_label(line: str) -> bool:
    fields = line.strip().rsplit(None, 1)
    return len(fields) == 2 and _is_int(fields[1])


def _rows(path: Path, bad: list[tuple[str, str]]) -> tuple[str, list[tuple[str, dict]]]:
    """The manifest's format (``csv``, ``kinetics``, ``jsonl`` or ``paths``) and its ``(where, row)`` pairs;
    rows that cannot be split into fields go to ``bad`` as ``(where, message)``."""
    reason = not_a_manifest(path)
    if reason is not None:
        raise DataError(f"{path} {reason}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl", _jsonl_rows(path, lines)
    first = next((line for line in lines if line.strip()), "")
    reader = csv.DictReader(lines)
    header = [h.strip() for h in reader.fieldnames] if reader.fieldnames else None
    if header is not None and ("path" in header or is_kinetics_header(header)):
        reader.fieldnames = header
        rows = []
        for row in reader:
            if any((v or "").strip() for v in row.values() if isinstance(v, str)):
                rows.append((f"{path}:{reader.line_num}", row))  # line_num: the file's line, blank lines counted
        return ("csv" if "path" in header else "kinetics"), rows
    if first.lstrip().startswith("{"):
        return "jsonl", _jsonl_rows(path, lines)
    if path.suffix.lower() == ".txt" or _looks_like_path_label(first):
        return "paths", _path_label_rows(path, lines, bad)
    raise DataError(
        f"{path}: not a manifest this reads: expected a CSV header with 'path' and 'label' (or Kinetics' "
        f"{','.join(KINETICS_COLUMNS)},split), JSON lines, or 'path label' lines; the first line is '{first[:80]}'"
    )


def read_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    label_map: str | os.PathLike | LabelMap | None = None,
    row_errors: list[tuple[str, str]] | None = None,
    captions: bool = False,
) -> tuple[list[Sample], LabelMap | None]:
    """Parse a manifest into :class:`Sample` rows and the label map used (``None`` for integer labels).

    ``captions`` (image-text and video-text pairs): every row needs a non-empty ``caption`` and the
    ``label`` becomes optional (-1 when absent).

    The format is read from the file: JSONL (``.jsonl``/``.json``/``.ndjson``, or lines starting with
    ``{``), CSV with a ``path`` column, the Kinetics CSV (:mod:`~tubelet.data.datasets.kinetics`), or
    ``path label`` lines (``.txt``, or any file whose first line is one). A bad row raises
    :class:`DataError` naming it; with ``row_errors`` given, bad rows are appended to it as
    ``(where, message)`` and skipped instead (``tubelet data check``). A Kinetics row whose clip is
    not found is such a bad row for ``data check``; a dataset keeps it at the downloader's name, so
    it fails to load as a missing file, counted against ``data.max_failure_fraction``.
    """
    mpath = Path(path)
    if not mpath.is_file():
        raise DataError(f"manifest '{mpath}' not found")
    root_p = Path(root) if root is not None else None
    bad: list[tuple[str, str]] = []
    fmt, raw = _rows(mpath, bad)
    if bad and row_errors is None:
        raise DataError(bad[0][1])
    lmap = load_label_map(label_map) if isinstance(label_map, (str, os.PathLike)) else label_map
    # class names map to ids from every row, so the ids do not depend on which files are present
    named = [(tok, where) for where, r in raw if isinstance(tok := _label_token(r.get("label")), str) and tok]
    if lmap is not None:
        given = f"label map '{label_map}'" if isinstance(label_map, (str, os.PathLike)) else "the label map"
        labels = _Labels(lmap, len(lmap), f"the {len(lmap)} classes of {given}", None)
    elif named:
        lmap = LabelMap.from_names(n for n, _ in named)
        labels = _Labels(lmap, len(lmap), "", named[0])
    else:
        labels = _Labels(None, None, "", None)
    samples = []
    errors = list(bad)
    for where, r in raw:
        try:
            if fmt == "kinetics":
                r = dict(r, path=_kinetics_path(where, r, root_p or mpath.parent, row_errors is not None))
            samples.append(_row_sample(where, r, labels, root_p, mpath, captions))
        except DataError as exc:
            if row_errors is None:
                raise
            errors.append((where, str(exc)))
    if row_errors is not None:
        row_errors.extend(sorted(errors, key=lambda e: _line_of(e[0])))
    if not samples and row_errors is None:
        raise DataError(f"manifest '{mpath}' has no rows")
    return samples, lmap


def _row_label(where: str, lab: Any, labels: _Labels) -> int:
    """The class id of a row's ``label``; :class:`DataError` naming the row and what would be right."""
    if lab is None or str(lab).strip() == "":
        raise DataError(f"{where}: missing 'label'")
    tok = _label_token(lab)
    if tok is None:
        shown = repr(lab) if isinstance(lab, str) else json.dumps(lab)
        raise DataError(f"{where}: label {shown} is neither an integer class id nor a class name")
    if isinstance(tok, str):
        if labels.lmap is None or tok not in labels.lmap:
            raise DataError(f"{where}: label '{tok}' is not in the label map")
        return labels.lmap.id(tok)
    if labels.named is not None:
        name, at = labels.named
        raise DataError(f"{where}: label {tok} is an integer id but other rows name their classes ('{name}' at {at}), "
                        "whose ids come from the sorted names: write every label the same way, or give a label map")
    if labels.bound is not None and not 0 <= tok < labels.bound:
        raise DataError(label_range_message(where, tok, labels.bound, labels.what))
    if tok < 0:
        raise DataError(f"{where}: label {tok} is negative: class ids count from 0")
    return tok


def _line_of(where: str) -> int:
    return int(where.rsplit(":", 1)[-1])


def _kinetics_path(where: str, r: dict, folder: Path, must_exist: bool) -> str:
    rel, found = find_kinetics_video(r, where, folder)
    if not found and must_exist:
        tried = ", ".join(c.rsplit(".", 1)[0] for c in kinetics_candidates(r, where)[:: len(KINETICS_EXTENSIONS)])
        raise DataError(f"{where}: no video for this row under '{folder}' (tried {tried} with "
                        f"{'/'.join(KINETICS_EXTENSIONS)})")
    return rel


def _row_sample(where: str, r: dict, labels: _Labels, root_p: Path | None, mpath: Path,
                captions: bool = False) -> Sample:
    """One manifest row as a :class:`Sample`; :class:`DataError` naming the row when it is invalid."""
    p = r.get("path")
    if p is None or str(p).strip() == "":
        raise DataError(f"{where}: missing 'path'")
    caption = r.get("caption")
    if captions and (caption is None or str(caption).strip() == ""):
        what = "missing 'caption'" if caption is None else "empty 'caption'"
        raise DataError(f"{where}: {what}: with data.captions: true every row pairs its file with a caption")
    lab = r.get("label")
    if captions and (lab is None or str(lab).strip() == ""):
        label = -1  # an image-text or video-text pair needs no class
    else:
        label = _row_label(where, lab, labels)
    start, end = _seconds(r.get("start"), where, "start"), _seconds(r.get("end"), where, "end")
    if start is not None and end is not None and end <= start:
        raise DataError(f"{where}: end ({end}) must be after start ({start})")
    return Sample(
        path=resolve_under_root(str(p).strip(), root_p, mpath.parent, where),
        label=label,
        start=start,
        end=end,
        caption=None if caption in (None, "") else str(caption),
        source=where,
    )
