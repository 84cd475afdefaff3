"""``tubelet track``: UTT tracking with a trained run.

Single object, ``tubelet track VIDEO --init x,y,w,h --run RUN_DIR``: VIDEO is a video file or a folder of
frames (``--fps`` sets a folder's rate). Writes one ``x,y,w,h`` box per frame to ``--out`` (default
``<video name>_track.txt``), optionally an annotated ``--render`` MP4 or GIF, shows a progress bar with the
frames per second, and with ``--eval GT`` (a ``groundtruth.txt`` of ``x,y,w,h`` or VOT polygons) prints OPE
success, precision and normalised precision (toolkit convention).

Multiple objects, ``tubelet track VIDEO --mot [--run RUN_DIR] --det det.txt``: VIDEO is a video file, a
frame folder or a MOT Challenge sequence folder (``seqinfo.ini``; its ``img1/`` frames, and its
``det/det.txt`` when no detections are named). Detections come from a MOT ``det.txt`` (``--det``), a
detector (``--detector PATH``, through ``tubelet.engine.detector.load_detector``) or, for experiments
only, the ground truth jittered by Gaussian noise with drops and false positives (``--jitter-gt GT``, a
stand-in for a detector). With ``--run`` the run's track transformer moves the tracks into each frame;
without, the association alone links the detections (``--link iou``: the IoU-only baseline). Writes MOT
results (``frame,id,x,y,w,h,score,-1,-1,-1``) to ``--out`` (default ``<name>_mot.txt``), optionally a
``--render`` MP4 or GIF with each identity in its colour, and with ``--eval gt.txt`` prints HOTA, MOTA and
IDF1 (trackeval). A sequence folder without frames is tracked from its detections alone when nothing
needs the pixels (no ``--run``, no ``--render``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="track one object from its first box, or all objects with --mot (UTT)")
    p.add_argument("video", help="video file, folder of frames, or (--mot) MOT sequence folder")
    p.add_argument("--init", default=None, metavar="X,Y,W,H", help="SOT: the target's box on the first frame, in pixels")
    p.add_argument("--run", dest="run_dir", default=None, metavar="RUN_DIR",
                   help="run folder of `tubelet fit` (utt); required for SOT, optional for --mot")
    p.add_argument("--out", default=None, help="boxes file (default: <video name>_track.txt, --mot: <name>_mot.txt)")
    p.add_argument("--render", default=None, metavar="OUT.mp4|OUT.gif", help="write the video with the boxes drawn")
    p.add_argument("--eval", dest="gt", default=None, metavar="GT", help="ground truth to score the boxes against")
    p.add_argument("--vot-convention", default="vot", choices=["vot", "pysot"], help="how GT polygons become boxes")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of a frame folder")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    m = p.add_argument_group("multi-object tracking")
    m.add_argument("--mot", action="store_true", help="track every detected object (MOT)")
    m.add_argument("--det", default=None, metavar="det.txt", help="public detections, MOT format")
    m.add_argument("--detector", default=None, metavar="PATH", help="a detector for tubelet.engine.detector.load_detector")
    m.add_argument("--nms-iou", default=None, metavar="IOU|none",
                   help="--detector: class-agnostic NMS at this IoU, or none (default: the run's method.nms_iou)")
    m.add_argument("--jitter-gt", default=None, metavar="gt.txt",
                   help="experiments only: the ground truth jittered as a stand-in for detections")
    # --jitter-* defaults (None): tubelet.data.datasets.tracking.jittered_detections' 0.05 / 0.1 / 0.5 / 0
    m.add_argument("--jitter-noise", type=float, default=None, help="--jitter-gt box noise, times the box size (0.05)")
    m.add_argument("--jitter-drop", type=float, default=None, help="--jitter-gt share of boxes dropped (0.1)")
    m.add_argument("--jitter-fp", type=float, default=None, help="--jitter-gt false positives per frame, mean (0.5)")
    m.add_argument("--jitter-seed", type=int, default=None, help="--jitter-gt seed (0)")
    # association defaults (None): tubelet.methods.utt_mot.AssociationConfig's, UTT's 0.1 / 0.4 / 1.2 / 10
    m.add_argument("--link", default="giou", choices=["giou", "iou"],
                   help="association cost: 1 - GIoU (UTT) or 1 - IoU (the IoU-only baseline)")
    m.add_argument("--det-threshold", type=float, default=None, help="detections kept above this score (0.1)")
    m.add_argument("--new-threshold", type=float, default=None, help="new tracks above this score (0.4)")
    m.add_argument("--max-cost", type=float, default=None, help="matches with a higher cost are rejected (1.2)")
    m.add_argument("--max-age", type=int, default=None, help="frames a track may stay unmatched (10)")
    m.add_argument("--benchmark", default="MOT15", choices=["MOT15", "MOT16", "MOT17", "MOT20"],
                   help="--eval preprocessing (MOT15: none)")
    p.set_defaults(run=run)


def draw_boxes(frames: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40),
               width: int = 2) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` uint8 with each frame's ``x,y,w,h`` box outlined (a copy)."""
    out = frames.copy()
    H, W = out.shape[1:3]
    for f, (x, y, w, h) in zip(out, boxes):
        x1, y1 = int(np.clip(round(x), 0, W - 1)), int(np.clip(round(y), 0, H - 1))
        x2, y2 = int(np.clip(round(x + w), 0, W - 1)), int(np.clip(round(y + h), 0, H - 1))
        f[y1:y1 + width, x1:x2 + 1] = colour
        f[max(y2 - width + 1, 0):y2 + 1, x1:x2 + 1] = colour
        f[y1:y2 + 1, x1:x1 + width] = colour
        f[y1:y2 + 1, max(x2 - width + 1, 0):x2 + 1] = colour
    return out


def id_colour(ids: np.ndarray, saturation: float = 0.85) -> np.ndarray:
    """A stable, well-spread RGB colour per identity ``(N, 3)`` uint8: golden-ratio hues at full value."""
    h6 = ((np.asarray(ids, np.float64) * 0.6180339887) % 1.0) * 6
    sector, f = np.floor(h6).astype(np.int64) % 6, h6 - np.floor(h6)
    one, p, q, t = np.ones_like(f), np.full_like(f, 1 - saturation), 1 - saturation * f, 1 - saturation * (1 - f)
    # the six sectors of the HSV hexcone: (r, g, b) per sector
    rgb = np.stack([np.choose(sector, c) for c in ((one, q, p, p, t, one), (t, one, one, q, p, p),
                                                    (p, p, t, one, one, q))], -1)
    return np.round(255 * rgb).astype(np.uint8).reshape(-1, 3)


def draw_tracks(frames: np.ndarray, rows, width: int = 2) -> np.ndarray:
    """Frames ``(N, H, W, 3)`` uint8 with MOT rows (frame ``t + 1``, id, ``x,y,w,h``) drawn: each identity's
    box in its colour with its number (a copy)."""
    from PIL import Image, ImageDraw

    out = frames.copy()
    colours = id_colour(rows.id)
    for t in range(len(out)):
        sel = np.flatnonzero(rows.frame == t + 1)
        if not len(sel):
            continue
        img = Image.fromarray(out[t])
        d = ImageDraw.Draw(img)
        for i in sel:  # drawing, one call per box
            x, y, w, h = rows.boxes[i]
            c = tuple(int(v) for v in colours[i])
            d.rectangle([x, y, x + w, y + h], outline=c, width=width)
            d.text((x + 2, y + 1), str(int(rows.id[i])), fill=c)
        out[t] = np.asarray(img)
    return out


def _write_frames(path: Path, frames: np.ndarray, fps: float) -> None:
    from tubelet.errors import ConfigError

    if path.suffix.lower() == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)), loop=0)
    elif path.suffix.lower() == ".mp4":
        from tubelet.data.synthetic import write_video

        write_video(path, frames, max(1, int(round(fps))))
    else:
        raise ConfigError(f"--render {path}: the file must end in .mp4 or .gif")


def _render(path: Path, reader, boxes: np.ndarray) -> None:
    _write_frames(path, draw_boxes(reader.get_frames(list(range(len(boxes)))), boxes), float(reader.metadata.fps))


def _progress_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", file=sys.stderr)

    def progress(done: int, total: int, fps: float) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(fps=f"{fps:.1f}")

    return bar, progress


def run(args: argparse.Namespace) -> int:
    from tubelet.errors import ConfigError

    if args.render and Path(args.render).suffix.lower() not in (".mp4", ".gif"):
        raise ConfigError(f"--render {args.render}: the file must end in .mp4 or .gif")
    if args.mot:
        return run_mot(args)
    for flag, value in _mot_flags(args):
        if value is not None:
            raise ConfigError(f"{flag} is for multi-object tracking: add --mot")
    if args.init is None or args.run_dir is None:
        raise ConfigError("single-object tracking needs --init X,Y,W,H and --run RUN_DIR (or --mot for every object)")
    return run_sot(args)


def _mot_flags(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The flags only MOT reads, with their values (None: not given)."""
    return [("--det", args.det), ("--detector", args.detector), ("--nms-iou", args.nms_iou), ("--jitter-gt", args.jitter_gt),
            ("--jitter-noise", args.jitter_noise), ("--jitter-drop", args.jitter_drop),
            ("--jitter-fp", args.jitter_fp), ("--jitter-seed", args.jitter_seed),
            ("--link", None if args.link == "giou" else args.link), ("--det-threshold", args.det_threshold),
            ("--new-threshold", args.new_threshold), ("--max-cost", args.max_cost), ("--max-age", args.max_age),
            ("--benchmark", None if args.benchmark == "MOT15" else args.benchmark)]


def run_sot(args: argparse.Namespace) -> int:
    from tubelet.data.datasets.tracking import read_box_file, sot_from_video, vot_polygon_to_box
    from tubelet.engine.track import load_tracker, track_video
    from tubelet.errors import ConfigError

    seq = sot_from_video(args.video, args.init)
    if Path(args.video).is_dir():
        seq.fps = float(args.fps)
    reader = seq.reader()
    gt = None
    if args.gt:
        rows = read_box_file(args.gt, widths=(4, 8))
        gt = vot_polygon_to_box(rows, args.vot_convention) if rows.shape[1] == 8 else rows
        if len(gt) != reader.metadata.num_frames:
            raise ConfigError(f"--eval {args.gt}: {len(gt)} boxes for the {reader.metadata.num_frames} frames of "
                              f"{args.video}")
    tracker = load_tracker(args.run_dir, args.device)
    bar, progress = _progress_bar(reader.metadata.num_frames)
    boxes = track_video(tracker, reader, seq.init_box, progress=progress)
    bar.close()
    out = Path(args.out) if args.out else Path(f"{Path(args.video).stem or Path(args.video).name}_track.txt")
    from tubelet.core.io import atomic_write_text

    atomic_write_text(out, "".join(f"{x:.2f},{y:.2f},{w:.2f},{h:.2f}\n" for x, y, w, h in boxes))
    print(f"boxes: {out} ({len(boxes)} frames)")
    if args.render:
        _render(Path(args.render), reader, boxes)
        print(f"video: {args.render}")
    if gt is not None:
        from tubelet.eval.tracking import sot_ope

        r = sot_ope([boxes], [gt])
        print(f"success {r['success']:.2f}  precision {r['precision']:.2f}  norm precision {r['norm_precision']:.2f}"
              f"  (OPE, toolkit convention, {len(gt)} frames)")
    return 0


def _mot_input(args: argparse.Namespace):
    """``(name, number of frames, reader or None, frame size (W, H) or None, default det.txt or None)``."""
    from tubelet.data.datasets.frames import FrameFolderReader
    from tubelet.data.datasets.tracking import load_mot_sequence
    from tubelet.data.decoding import open_video
    from tubelet.errors import DataError

    v = Path(args.video)
    if (v / "seqinfo.ini").is_file():
        seq = load_mot_sequence(v)
        reader = seq.reader() if seq.frames is not None else None
        size = (int(seq.info["imwidth"]), int(seq.info["imheight"])) if "imwidth" in seq.info and "imheight" in \
            seq.info else None
        det = next((q for q in (v / "det" / "det.txt", v / "det.txt") if q.is_file()), None)
        return seq.name, seq.num_frames, reader, size, det
    if v.is_dir():
        reader = FrameFolderReader(v, float(args.fps))
    elif v.is_file():
        reader = open_video(v)
    else:
        raise DataError(f"{v}: no such video, frame folder or MOT sequence folder")
    meta = reader.metadata
    return v.stem if v.is_file() else v.name, meta.num_frames, reader, (meta.width, meta.height), None


def _nms_iou(text: str) -> float | None:
    """``--nms-iou``'s value: ``none`` or a number in [0, 1] (else a one-line ``ConfigError``)."""
    from tubelet.errors import ConfigError
    from tubelet.methods.detr import check_nms_iou

    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--nms-iou {text}: not a number in [0, 1] or none") from None
    return check_nms_iou(value, f"--nms-iou {text}")


def run_mot(args: argparse.Namespace) -> int:
    from tubelet.core.io import atomic_write_text
    from tubelet.data.datasets.tracking import jittered_detections, read_mot_file
    from tubelet.engine.track import load_mot_tracker, track_mot
    from tubelet.errors import ConfigError
    from tubelet.methods.utt_mot import AssociationConfig, DetectionsByFrame, frame_detector

    if args.init is not None:
        raise ConfigError("--init is the single object's first box; --mot tracks every detected object")
    if args.vot_convention != "vot":
        raise ConfigError("--vot-convention reads SOT ground truth; --mot scores MOT files")
    jitter = {k: v for k, v in (("seed", args.jitter_seed), ("box_noise", args.jitter_noise), ("drop", args.jitter_drop),
                                ("false_positives", args.jitter_fp)) if v is not None}
    if jitter and not args.jitter_gt:
        raise ConfigError("--jitter-noise, --jitter-drop, --jitter-fp and --jitter-seed set up --jitter-gt, which is not given")
    if args.nms_iou is not None and not args.detector:
        raise ConfigError("--nms-iou sets up --detector's post-processing, which is not given")
    nms_iou = _nms_iou(args.nms_iou) if args.nms_iou is not None else "run"
    name, n, reader, size, default_det = _mot_input(args)
    sources = [f for f, v in (("--det", args.det), ("--detector", args.detector), ("--jitter-gt", args.jitter_gt)) if v]
    if len(sources) > 1:
        raise ConfigError(f"{' and '.join(sources)}: name one source of detections")
    gt = read_mot_file(args.gt, "gt", n) if args.gt else None
    if args.jitter_gt:
        import inspect

        rows = jittered_detections(read_mot_file(args.jitter_gt, "gt", n), frame_size=size, num_frames=n, **jitter)
        detections = (lambda d: lambda t, frame: d(t))(DetectionsByFrame(rows))
        used = {k: v.default for k, v in inspect.signature(jittered_detections).parameters.items()
                if k in ("seed", "box_noise", "drop", "false_positives")} | jitter
        what = (f"the ground truth {args.jitter_gt} jittered as a stand-in for a detector (noise {used['box_noise']}, "
                f"drop {used['drop']}, {used['false_positives']} false positives a frame, seed {used['seed']})")
    elif args.detector:
        if reader is None:
            raise ConfigError(f"--detector {args.detector}: {args.video} has no frames to detect on")
        from tubelet.engine.detector import load_detector

        detector = load_detector(args.detector, nms_iou=nms_iou)
        detections = frame_detector(detector)
        nms = "no NMS" if detector.nms_iou is None else f"NMS at IoU {detector.nms_iou:g}"
        what = f"the detector {args.detector} ({nms})"
    else:
        det = Path(args.det) if args.det else default_det
        if det is None:
            raise ConfigError(f"{args.video}: no detections: name --det det.txt, --detector PATH or --jitter-gt gt.txt")
        detections = (lambda d: lambda t, frame: d(t))(DetectionsByFrame(read_mot_file(det, "det", n)))
        what = f"the detections {det}"
    needs_frames = args.run_dir is not None or args.render is not None or args.detector is not None
    if needs_frames and reader is None:
        raise ConfigError(f"{args.video}: the sequence has no frames (img1/), which --run and --render need")
    given = {k: v for k, v in (("det_threshold", args.det_threshold), ("new_threshold", args.new_threshold),
                               ("max_cost", args.max_cost), ("max_age", args.max_age)) if v is not None}
    assoc = AssociationConfig(**given, cost=args.link)
    tracker = load_mot_tracker(args.run_dir, assoc, args.device)
    mode = f"UTT track transformer of {args.run_dir}" if args.run_dir else "association alone (boxes not moved)"
    print(f"tracking {name}: {n} frames, {what}; {mode}, cost 1 - {args.link.upper()}")
    bar, progress = _progress_bar(n)
    rows = track_mot(tracker, n, detections, reader if needs_frames else None, progress=progress)
    bar.close()
    out = Path(args.out) if args.out else Path(f"{name}_mot.txt")
    atomic_write_text(out, "".join(f"{f},{i},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{c:.3f},-1,-1,-1\n"
                                   for f, i, (x, y, w, h), c in zip(rows.frame, rows.id, rows.boxes, rows.conf)))
    print(f"tracks: {out} ({len(rows)} boxes, {len(np.unique(rows.id))} identities)")
    if args.render:
        _write_frames(Path(args.render), draw_tracks(reader.get_frames(list(range(n))), rows),
                      float(reader.metadata.fps))
        print(f"video: {args.render}")
    if gt is not None:
        from tubelet.eval.tracking import mot_metrics

        res = mot_metrics({name: (gt, rows, n)}, benchmark=args.benchmark)["COMBINED"]
        print(f"HOTA {100 * res['HOTA']:.2f}  MOTA {100 * res['MOTA']:.2f}  IDF1 {100 * res['IDF1']:.2f}  "
              f"IDsw {int(res['IDSW'])}  ({args.benchmark} rules, {n} frames)")
    return 0
