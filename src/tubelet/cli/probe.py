"""``tubelet probe PATH...``: one JSON line per video with its metadata, or why it cannot be read.

Each file is opened and, unless ``--fast``, decoded completely, because some corrupt files open fine
and only fail partway through (``frames`` is then the number of frames actually decoded), and most
damaged ones decode to frames that FFmpeg concealed without an error. Fields: path, ok, frames, fps,
duration, width, height, rotation, codec, error, and the concealed damage the full decode found:
``damaged`` (how many frames: flagged as concealed or never produced; ``null`` when not looked for),
``damaged_frames`` (their indices), ``damage`` (one line: which frames, which signal, the decoder's
first error messages). Exit status: 0 when every file is readable and undamaged, 1 when any is not
(all files are still reported).
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from typing import Any, Callable


def probe_file(path: str, backend: str = "pyav", full: bool = True) -> dict:
    """The probe record of one file (never raises for a bad video)."""
    from functools import partial

    from tubelet.data.decoding import open_video

    return probe_reader(path, partial(open_video, backend=backend), full)[0]


def probe_reader(path: str, opener: Callable[[str], Any], full: bool = True) -> tuple[dict, Fraction | None]:
    """The probe record of ``path`` opened by ``opener`` (a video, a frame folder, an image), and its
    exact duration in seconds (``None`` when unreadable); never raises for a bad file."""
    from tubelet.data.decoding import PyAVReader
    from tubelet.errors import VideoError

    rec: dict = {"path": str(path), "ok": False, "frames": None, "fps": None, "duration": None, "width": None,
                 "height": None, "rotation": None, "codec": None, "error": None, "damaged": None,
                 "damaged_frames": None, "damage": None}  # fmt: skip
    try:
        reader = opener(path)
        m = reader.metadata
        rec.update(frames=m.num_frames, fps=round(float(m.fps), 6), duration=round(float(m.duration), 6), width=m.width,
                   height=m.height, rotation=m.rotation, codec=m.codec)  # fmt: skip
        if full:
            if isinstance(reader, PyAVReader):  # torchcodec's reader too: the full decode is PyAV's
                n, _ = reader.decode_all()
                rec["frames"] = n
            else:
                reader.get_frames(range(m.num_frames))
            if isinstance(reader, PyAVReader) and reader.detect_damage:  # frame folders, images: not looked for
                d = reader.damage
                frames = list(d.frames) if d is not None else []
                rec.update(damaged=len(frames), damaged_frames=frames, damage=d.describe() if d is not None else None)
        reader.close()
        rec["ok"] = True
    except VideoError as exc:
        rec["error"] = exc.reason
        return rec, None
    return rec, Fraction(m.duration)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="print metadata of video files as JSON lines; exit 1 if any is unreadable")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--backend", default="pyav", choices=["pyav", "torchcodec", "auto"])
    p.add_argument("--fast", action="store_true", help="read the container index only; skip the full decode")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.paths:
        rec = probe_file(path, backend=args.backend, full=not args.fast)
        bad += not rec["ok"] or rec["damage"] is not None
        print(json.dumps(rec), flush=True)
    return 1 if bad else 0
