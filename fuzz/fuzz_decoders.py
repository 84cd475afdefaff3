"""Coverage-guided fuzzing of the video decoders and ``tubelet probe`` with atheris (libFuzzer).

Each input is written to a file and read the three ways tubelet reads videos: ``probe_file`` (open +
full decode), ``open_video`` + a random-access ``get_frames`` of the first, middle and last frame, and
``indices_in`` over the whole duration. The only exception allowed out is tubelet's own
:class:`~tubelet.errors.VideoError`; anything else is a finding. Findings do not stop the run: each is
saved as ``<crash_dir>/<ExceptionType>-<sha1>.bin`` (one per exception type and place) and counted, so
one bounded run reports all of them.

    pip install -e .[fuzz]
    mkdir -p /tmp/corpus && cp ../shared/data/videos/{unordered.mov,video_*.mov,frames.webm,corrupted.mp4} /tmp/corpus/
    python fuzz/fuzz_decoders.py /tmp/corpus -runs=2000 -max_total_time=240 -timeout=20 -rss_limit_mb=3072

Single-threaded (decoder threads = 1; torch is not imported). Only tubelet's own code is instrumented.
``FUZZ PROGRESS`` lines come every 250 inputs, and one ``FUZZ SUMMARY`` line (the inputs run and the
findings) when the process exits.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["tubelet"]):
    from tubelet.cli.probe import probe_file
    from tubelet.data.decoding import open_video
    from tubelet.errors import VideoError

CRASH_DIR = Path(os.environ.get("TUBELET_FUZZ_CRASH_DIR", "fuzz/findings"))
_WORK = Path(tempfile.mkdtemp(prefix="tubelet-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
_stats = {"runs": 0, "video_errors": 0, "ok": 0}
_findings: dict[str, str] = {}  # (type, place) -> saved input


def _exercise(path: str) -> None:
    rec = probe_file(path, full=True)  # never raises for a bad video: VideoError becomes rec["error"]
    if rec["ok"]:
        _stats["ok"] += 1
    reader = open_video(path, threads=1)
    try:
        n = reader.num_frames
        reader.get_frames([0, n // 2, n - 1])
        reader.indices_in(0, reader.duration)
    finally:
        reader.close()


def test_one_input(data: bytes) -> None:
    _stats["runs"] += 1
    if _stats["runs"] % 250 == 0:
        _summary("FUZZ PROGRESS")
    path = _WORK / "input.bin"
    path.write_bytes(data)
    try:
        _exercise(str(path))
    except VideoError:
        _stats["video_errors"] += 1
    except Exception as exc:  # noqa: BLE001 - every other exception is a finding
        tb = traceback.extract_tb(exc.__traceback__)
        place = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
        key = f"{type(exc).__name__}@{place}"
        if key not in _findings:
            CRASH_DIR.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha1(data).hexdigest()[:12]
            out = CRASH_DIR / f"{type(exc).__name__}-{digest}.bin"
            out.write_bytes(data)
            _findings[key] = str(out)
            print(f"FINDING {key}: {exc!r} -> {out}", file=sys.stderr, flush=True)


def _summary(label: str = "FUZZ SUMMARY") -> None:
    print(f"{label} runs={_stats['runs']} ok={_stats['ok']} video_errors={_stats['video_errors']} "
          f"findings={len(_findings)}", flush=True)
    for key, out in _findings.items():
        print(f"  {key} -> {out}", flush=True)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _at_c_exit(_: int | None) -> None:
    _summary()
    shutil.rmtree(_WORK, ignore_errors=True)


def register_exit_summary() -> None:
    """Print the summary when the process exits. libFuzzer ends it with C ``exit()`` once ``-runs`` or
    ``-max_total_time`` is reached, which runs C's exit handlers but not Python's ``atexit`` ones (the
    interpreter is never finalised), so the handler is registered with the C library. A timeout or
    memory-limit kill (``-timeout``, ``-rss_limit_mb``) ends the process with ``_exit`` and prints none:
    libFuzzer reports those itself."""
    ctypes.CDLL(None).__cxa_atexit(_at_c_exit, None, None)


def main() -> None:
    register_exit_summary()
    atheris.Setup(sys.argv, test_one_input)
    try:
        atheris.Fuzz()
    except BaseException:
        # The C handler must not run after the interpreter is finalised: end without finalising.
        traceback.print_exc()
        _summary()
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
