"""``tubelet predict --runtime onnxruntime --per-clip`` on an exported run: every real clip gives its clips'
predictions (equal to eager) or one clear error line, ``--realtime`` reports whether it keeps up, and a
10-minute video streams in the peak memory of a 1-minute one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import error_lines

pytest.importorskip("onnxruntime")

UNREADABLE = {"corrupt_truncated.mp4", "corrupted.mp4"}  # SOURCES.md: cannot be opened / decode error
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run's backbone exported to ONNX through the CLI."""
    from tubelet.cli.main import main

    out = tmp_path_factory.mktemp("exported") / "tiny.onnx"
    assert main(["export", "--checkpoint", str(tiny_run), "--format", "onnx", "-o", str(out), "--threads", "1"]) == 0
    return out


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_per_clip_on_every_real_clip_equals_eager(tiny_run, exported, videos_dir, capsys):
    from tubelet.cli.main import main

    files = sorted(str(p) for p in videos_dir.iterdir() if p.is_file())
    capsys.readouterr()
    rc = main(["predict", *files, "--run", str(tiny_run), "--runtime", "onnxruntime", "--exported", str(exported),
               "--threads", "1", "--per-clip", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1  # the two unreadable files
    got = _records(out)
    failed = sorted(line.split(": ")[2].rsplit("/", 1)[-1] for line in error_lines(err))
    assert failed == sorted(UNREADABLE)  # one line each, naming the file
    # corrupted.mp4 decodes for its first clips, then its error names the clip and its seconds
    assert "corrupted.mp4: clip 5 [2.667, 3.200) s: corrupt data while decoding" in err
    seen = {r["path"] for r in got}
    assert seen == {f for f in files if not f.endswith("corrupt_truncated.mp4")}  # every other file predicted
    for r in got:
        assert r["end"] > r["start"] >= 0 and len(r["topk"]) == 4
    capsys.readouterr()
    assert main(["predict", *files, "--run", str(tiny_run), "--per-clip", "--json"]) == 1
    eager = _records(capsys.readouterr().out)
    assert [(r["path"], r["clip"], r["start"]) for r in got] == [(r["path"], r["clip"], r["start"]) for r in eager]
    for a, b in zip(got, eager):
        assert [t["label"] for t in a["topk"]][:1] == [t["label"] for t in b["topk"]][:1]
        assert max(abs(x["score"] - y["score"]) for x, y in zip(a["topk"], b["topk"])) < 1e-5


def test_per_clip_table_and_realtime(tiny_run, exported, videos_dir, capsys):
    from tubelet.cli.main import main

    clip = str(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    capsys.readouterr()
    assert main(["predict", clip, "--run", str(tiny_run), "--runtime", "onnxruntime", "--exported", str(exported),
                 "--per-clip", "--realtime", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{clip}  [   0.000,    0.533) s  clip 1/15  ")  # 4 frames x 4 at 30 fps
    summary = lines[-1]
    assert summary.startswith(f"{clip}: realtime: ") and "on 1 threads" in summary
    assert summary.endswith("keeps up") or summary.endswith("does not keep up")
    assert "frames/s against the video's 29.97" in summary  # the clip's own frame rate (SOURCES.md)


def test_runtime_errors_are_one_line(tiny_run, exported, videos_dir, tmp_path, capsys):
    from tubelet.cli.main import main

    clip = str(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    cases = [
        (["--runtime", "onnxruntime"], "--runtime onnxruntime needs --exported FILE"),
        (["--runtime", "torch-export", "--exported", str(exported)], "--runtime torch-export runs *.pt2 files"),
        (["--exported", str(exported)], "--exported runs in --runtime torch-export, onnxruntime, aoti or executorch"),
        (["--realtime"], "--realtime measures clip-by-clip classification"),
        (["--runtime", "onnxruntime", "--exported", str(exported), "data.crop_size=32", "--per-clip"],
         "has shape (1, 3, 4, 32, 32) but the program was exported for (B, 3, 4, 16, 16) (B <= 1024)"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(["predict", clip, "--run", str(tiny_run), *extra]) == 1, extra
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], (extra, lines)


PEAK = """
import resource, sys
from tubelet.cli.main import main
rc = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "RC", rc)
"""


def _synth(out: Path, frames: int) -> Path:
    from tubelet.cli.main import main

    assert main(["data", "synth", "--out", str(out), "--videos", "1", "--size", "32", "--frames", str(frames),
                 "--fps", "5", "--seed", "0"]) == 0
    return next((out / "videos").iterdir())


def test_ten_minute_video_streams_in_the_memory_of_one_minute(tiny_run, exported, tmp_path, capsys):
    long, short = _synth(tmp_path / "long", 10 * 60 * 5), _synth(tmp_path / "short", 60 * 5)
    peaks, clips = {}, {}
    for name, video in (("long", long), ("short", short)):
        # 8-second windows (4 frames, one every 60 at the 30 fps reference): 75 clips in ten minutes
        cmd = [sys.executable, "-c", PEAK, "predict", str(video), "--run", str(tiny_run), "--runtime", "onnxruntime",
               "--exported", str(exported), "--threads", "1", "--per-clip", "--json", "data.sampling_rate=60",
               "data.crop_size=16", "data.test_short_side=16"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.strip().splitlines()
        peaks[name] = int(lines[-1].split()[1])
        clips[name] = json.loads(lines[-2])["num_clips"]
    assert clips == {"long": 75, "short": 8}
    assert peaks["long"] <= 1.10 * peaks["short"], peaks
