"""Damage that decoders conceal: which byte-flipped copies of a real clip tubelet reports, which it
cannot, why, and what looking costs.

Claim: every copy whose decoded frames differ from the original's is either unreadable (a
``VideoError``, as before), reported as damaged by ``tubelet probe`` / ``tubelet data check`` (with
the frames and the signal), or missed for a reason this script names: the flipped bytes decode as
valid syntax of a codec that carries no checksum, so only the picture changes. Looking costs
little: decoding with detection on (corrupt-frame flag, error log, ``err_detect`` checks) is within
a few percent of decoding without it.

What is measured, in one run, per clip (default: the UCF101 Xvid AVI, the Kinetics H.264 MP4 and the
VP9 WebM of ``../shared/data/videos``):

* ``--copies`` copies (default 200), copy ``i`` seeded by ``i``: 1-4 bytes XOR-ed with random
  non-zero values, at positions drawn inside the video packets (even ``i``: past the container
  headers) or anywhere in the file (odd ``i``). Deterministic: the same copies on every machine.
* Each copy and the original are decoded completely by plain PyAV (FFmpeg's defaults, no tubelet
  code), and the copy "differs" when its sequence of decoded frames (the raw planes) is not the
  original's.
* Each copy is probed as ``tubelet probe`` does (``probe_file``: open, index, full decode with
  detection): unreadable, damaged (which signals fired), or clean. A clean copy that differs is a
  miss; its reason comes from where the flips landed: in which frame's packet of the original and
  the codec's lack of a checksum, or outside every video packet.
* Which signal caught which copy: the corrupt-frame flag, missing frames, the error log, and how
  many copies only ``err_detect`` (``tubelet.data.decoding.pyav.ERR_DETECT``) turned into flagged
  ones (the copy probed again with it off).
* Cost: the original decoded with detection off (``PyAVReader(detect_damage=False)``, FFmpeg's
  defaults), on without ``err_detect`` and on, interleaved, ``--repeats`` rounds each: a full decode
  (``decode_all``) and 16 training-clip reads (``get_frames`` of 16 frames at fixed random windows)
  by a reader that has decoded once already. The median over rounds of each round's ratio to
  detection off (the machine is shared: absolute times are not reported).

``--data-check N`` then runs ``tubelet data check`` on a class folder of the first N copies of the
first clip and lists, for every copy whose frames differ, whether the check reported it, and why
not where it did not.

Usage: ``python benchmarks/damage.py [--quick] [--copies 200] [--clips a.avi b.mp4] [--data-check 50]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CLIPS = ["v_SoccerJuggling_g23_c01.avi", "WUzgd7C1pWA.mp4", "bbb_480p_vp9_opus_1second.webm"]

# Why a flip inside a frame's packet can go unseen, per codec: none of these carries a checksum of its
# pictures, so bits that still parse as valid syntax decode to a different picture without an error.
NO_CHECKSUM = {
    "h264": "H.264 carries no checksum: the flipped bits still parse as valid CABAC/CAVLC syntax, so "
            "FFmpeg decodes a different picture without an error",
    "mpeg4": "MPEG-4 Part 2 carries no checksum: the flipped bits still form valid VLC codes (a "
             "coefficient or motion vector changes), so FFmpeg decodes a different picture without an error",
    "vp9": "VP9 carries no checksum and FFmpeg's VP9 decoder neither conceals nor flags: the flipped "
           "bits still decode through its arithmetic coder, so only the picture changes",
}


def video_packets(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``(pos, size)`` of every video packet of ``path`` (file offsets), the display index of each
    (its PTS rank) and the codec name."""
    import av

    with av.open(str(path), metadata_errors="ignore") as c:
        s = c.streams.video[0]
        rows = [(p.pos, p.size, p.pts if p.pts is not None else p.dts) for p in c.demux(s) if p.size > 0 and p.pos >= 0]
        codec = s.codec_context.name
    arr = np.asarray(rows, dtype=np.int64)
    display = np.argsort(np.argsort(arr[:, 2], kind="stable"), kind="stable")
    return arr[:, :2], display, codec


def make_copy(src: Path, data: bytes, packets: np.ndarray, seed: int, out_dir: Path) -> tuple[Path, list[int]]:
    """Copy ``seed`` of ``src`` in ``out_dir``: 1-4 bytes flipped (XOR with a random non-zero byte),
    inside the video packets for even seeds and anywhere for odd ones; its path and the offsets."""
    rng = np.random.default_rng([seed, 7])
    buf = bytearray(data)
    k = int(rng.integers(1, 5))
    if seed % 2 == 0:
        sizes = packets[:, 1].astype(np.float64)
        pick = rng.choice(len(packets), size=k, p=sizes / sizes.sum())
        pos = packets[pick, 0] + (rng.random(k) * packets[pick, 1]).astype(np.int64)
    else:
        pos = rng.integers(0, len(buf), size=k)
    for p in pos:
        buf[int(p)] ^= int(rng.integers(1, 256))
    out = out_dir / f"{src.stem}_{seed:03d}{src.suffix}"
    out.write_bytes(bytes(buf))
    return out, [int(p) for p in pos]


def frame_digests(path: Path) -> list[bytes] | None:
    """A digest of each frame plain PyAV decodes from ``path`` (output order), ``None`` when it raises."""
    import av

    out = []
    try:
        with av.open(str(path), metadata_errors="ignore") as c:
            s = c.streams.video[0]
            s.thread_count = 1
            for f in c.decode(s):
                h = hashlib.blake2b(digest_size=16)
                for p in f.planes:
                    h.update(bytes(p))
                out.append(h.digest())
    except Exception:
        return None
    return out


def miss_reason(offsets: list[int], packets: np.ndarray, display: np.ndarray, codec: str) -> str:
    """Why a copy whose frames differ can pass unseen, from where its flips landed in the original."""
    inside = []
    for off in offsets:
        hit = np.flatnonzero((packets[:, 0] <= off) & (off < packets[:, 0] + packets[:, 1]))
        if hit.size:
            inside.append(int(display[hit[0]]))
    if inside:
        where = f"flip in the packet of frame {', '.join(map(str, sorted(set(inside))))}"
        return f"{where}: {NO_CHECKSUM.get(codec, f'{codec} carries no checksum the decoder checks')}"
    return ("flips outside every video packet (container tables): they change what the demuxer hands the "
            "decoder (a size or timestamp) into something still valid")


def probe_signals(path: Path) -> tuple[str, tuple[str, ...]]:
    """``("unreadable" | "damaged" | "clean", signals)`` as ``tubelet probe`` sees ``path``."""
    from tubelet.data.decoding import PyAVReader
    from tubelet.errors import VideoError

    try:
        r = PyAVReader(path)
        r.decode_all()
    except VideoError:
        return "unreadable", ()
    d = r.damage
    r.close()
    return ("damaged", d.signals) if d is not None else ("clean", ())


def study(name: str, n: int, out_dir: Path) -> dict:
    from tubelet.data.decoding import pyav

    src = VIDEOS / name
    data = src.read_bytes()
    packets, display, codec = video_packets(src)
    ref = frame_digests(src)
    rows = []
    for seed in range(n):
        path, offsets = make_copy(src, data, packets, seed, out_dir)
        got = frame_digests(path)
        differs = got != ref
        status, signals = probe_signals(path)
        needs_err_detect = False
        if status == "damaged":
            saved, pyav.ERR_DETECT = pyav.ERR_DETECT, ""
            try:
                needs_err_detect = probe_signals(path)[0] == "clean"
            finally:
                pyav.ERR_DETECT = saved
        reason = miss_reason(offsets, packets, display, codec) if differs and status == "clean" else ""
        rows.append(dict(seed=seed, path=path, differs=differs, status=status, signals=signals,
                         needs_err_detect=needs_err_detect, reason=reason))
    return dict(name=name, codec=codec, rows=rows)


def cost(name: str, repeats: int) -> dict[str, float]:
    """Time of a full decode and of 16 training-clip reads with detection on, and on without
    ``err_detect``, over detection off: the median over rounds of each round's ratio."""
    from tubelet.data.decoding import PyAVReader, pyav

    path = VIDEOS / name
    n = PyAVReader(path, detect_damage=False).num_frames
    rng = np.random.default_rng(0)
    windows = [np.arange(s, min(n, s + 16)) for s in rng.integers(0, max(1, n - 16), size=16)]
    variants = {"off": (False, pyav.ERR_DETECT), "no err_detect": (True, ""), "on": (True, pyav.ERR_DETECT)}
    times: dict[tuple[str, str], list[float]] = {(k, v): [] for k in ("full", "clips") for v in variants}
    saved = pyav.ERR_DETECT
    try:
        for _ in range(repeats):
            for v, (detect, err_detect) in variants.items():  # interleaved: all see the same machine load
                pyav.ERR_DETECT = err_detect
                r = PyAVReader(path, detect_damage=detect)
                r.decode_all()  # opens the container and decodes once: the timed calls start warm
                t = time.perf_counter()
                r.decode_all()
                times["full", v].append(time.perf_counter() - t)
                t = time.perf_counter()
                for w in windows:
                    r.get_frames(w)
                times["clips", v].append(time.perf_counter() - t)
                r.close()
    finally:
        pyav.ERR_DETECT = saved
    # a slow moment hits every variant of one round, so each round's ratio is taken before the median
    return {f"{k} {v}": statistics.median(np.divide(times[k, v], times[k, "off"]))
            for k in ("full", "clips") for v in ("no err_detect", "on")}


def data_check(name: str, n: int, out_dir: Path) -> None:
    """``tubelet data check`` on a class folder of the first ``n`` copies: each differing copy, reported or why not."""
    from tubelet.cli.main import main

    src = VIDEOS / name
    data = src.read_bytes()
    packets, display, codec = video_packets(src)
    ref = frame_digests(src)
    folder = out_dir / "check" / "copies"
    folder.mkdir(parents=True, exist_ok=True)
    copies = [make_copy(src, data, packets, seed, folder) for seed in range(n)]
    buf = io.StringIO()
    with redirect_stdout(buf):
        main(["data", "check", str(folder.parent)])
    out = buf.getvalue().splitlines()
    bad_lines = [line for line in out if line.startswith("BAD ")]
    print(f"\n`tubelet data check` on {n} copies of {name}: {out[-1]}\n")
    print("| copy | frames differ, from frame | reported by data check | missed: why |")
    print("|---|---|---|---|")
    missed = 0
    for path, offsets in copies:
        got = frame_digests(path)
        if got == ref:
            continue
        # decoders output frames in display order, so the first differing digest is a display index
        first = next((i for i, (a, b) in enumerate(zip(got or [], ref)) if a != b), min(len(got or []), len(ref)))
        hit = any(f" {path}: " in line for line in bad_lines)
        missed += not hit
        why = "" if hit else miss_reason(offsets, packets, display, codec)
        print(f"| {path.name} | {first} | {'yes' if hit else 'no'} | {why} |")
    print(f"\n{missed} differing copies missed, each with its reason above.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=200)
    ap.add_argument("--clips", nargs="+", default=CLIPS)
    ap.add_argument("--repeats", type=int, default=9, help="interleaved timing rounds per clip")
    ap.add_argument("--data-check", type=int, default=50, help="copies of the first clip for tubelet data check (0: skip)")
    ap.add_argument("--out", default="/tmp/tubelet_damage", help="folder for the copies")
    ap.add_argument("--quick", action="store_true", help="8 copies, 2 rounds, 8 for data check: checks that it runs")
    ap.add_argument("--verbose", action="store_true", help="list every miss with its reason")
    args = ap.parse_args()
    if args.quick:
        args.copies, args.repeats, args.data_check = 8, 2, 8
    sys.path.insert(0, str(ROOT / "src"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    print("| clip | codec | copies | unreadable | readable, frames differ | reported damaged | missed | unchanged "
          "| decode cost, full (on/off; without err_detect) | decode cost, 16 clips (on/off; without err_detect) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    studies = []
    for name in args.clips:
        st = study(name, args.copies, out_dir)
        c = cost(name, args.repeats)
        rows = st["rows"]
        unreadable = sum(r["status"] == "unreadable" for r in rows)
        differ = [r for r in rows if r["differs"] and r["status"] != "unreadable"]
        damaged = sum(r["status"] == "damaged" for r in differ)
        missed = sum(r["status"] == "clean" for r in differ)
        unchanged = sum(not r["differs"] for r in rows)
        print(f"| {name} | {st['codec']} | {len(rows)} | {unreadable} | {len(differ)} | {damaged} | {missed} | "
              f"{unchanged} | {c['full on']:.3f} ({c['full no err_detect']:.3f}) | {c['clips on']:.3f} "
              f"({c['clips no err_detect']:.3f}) |")
        studies.append(st)

    print("\nWhich signal caught the copies reported damaged (a copy may fire several):\n")
    print("| clip | damaged | corrupt-frame flag | missing frames | error log (decoder, demuxer) | only with err_detect | "
          "reported, frames unchanged |")
    print("|---|---|---|---|---|---|---|")
    for st in studies:
        dmg = [r for r in st["rows"] if r["status"] == "damaged"]
        by = {s: sum(s in r["signals"] for r in dmg) for s in ("corrupt-frame flag", "missing frames", "error log")}
        false = sum(r["status"] == "damaged" and not r["differs"] for r in st["rows"])
        print(f"| {st['name']} | {len(dmg)} | {by['corrupt-frame flag']} | {by['missing frames']} | "
              f"{by['error log']} | {sum(r['needs_err_detect'] for r in dmg)} | {false} |")

    print("\nMisses, by reason:\n")
    for st in studies:
        misses = [r for r in st["rows"] if r["differs"] and r["status"] == "clean"]
        kinds: dict[str, int] = {}
        for r in misses:
            kind = r["reason"].split(": ", 1)[1] if r["reason"].startswith("flip in the packet") else r["reason"]
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, count in kinds.items():
            print(f"- {st['name']}: {count} copies: {kind}")
        if args.verbose:
            for r in misses:
                print(f"  - {r['path'].name}: {r['reason']}")
    if args.data_check:
        data_check(args.clips[0], args.data_check, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
