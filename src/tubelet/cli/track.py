"""``tubelet track VIDEO --init x,y,w,h --run RUN_DIR``: single-object tracking with a trained UTT run.

VIDEO is a video file or a folder of frames (``--fps`` sets a folder's rate). Writes one ``x,y,w,h`` box
per frame to ``--out`` (default ``<video name>_track.txt``), optionally an annotated ``--render`` MP4 or
GIF, shows a progress bar with the frames per second, and with ``--eval GT`` (a ``groundtruth.txt`` of
``x,y,w,h`` or VOT polygons) prints OPE success, precision and normalised precision (toolkit convention).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("track", help="track one object through a video from its first box (UTT)")
    p.add_argument("video", help="video file or folder of frames")
    p.add_argument("--init", required=True, metavar="X,Y,W,H", help="the target's box on the first frame, in pixels")
    p.add_argument("--run", dest="run_dir", required=True, metavar="RUN_DIR", help="run folder of `tubelet fit` (utt)")
    p.add_argument("--out", default=None, help="boxes file (default: <video name>_track.txt)")
    p.add_argument("--render", default=None, metavar="OUT.mp4|OUT.gif", help="write the video with the boxes drawn")
    p.add_argument("--eval", dest="gt", default=None, metavar="GT", help="ground truth to score the boxes against")
    p.add_argument("--vot-convention", default="vot", choices=["vot", "pysot"], help="how GT polygons become boxes")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of a frame folder")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
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


def _render(path: Path, reader, boxes: np.ndarray) -> None:
    from tubelet.errors import ConfigError

    frames = draw_boxes(reader.get_frames(list(range(len(boxes)))), boxes)
    fps = float(reader.metadata.fps)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(round(1000 / fps)), loop=0)
    elif path.suffix.lower() == ".mp4":
        from tubelet.data.synthetic import write_video

        write_video(path, frames, max(1, int(round(fps))))
    else:
        raise ConfigError(f"--render {path}: the file must end in .mp4 or .gif")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tubelet.data.datasets.tracking import read_box_file, sot_from_video, vot_polygon_to_box
    from tubelet.engine.track import load_tracker, track_video
    from tubelet.errors import ConfigError

    seq = sot_from_video(args.video, args.init)
    if Path(args.video).is_dir():
        seq.fps = float(args.fps)
    reader = seq.reader()
    if args.render and Path(args.render).suffix.lower() not in (".mp4", ".gif"):
        raise ConfigError(f"--render {args.render}: the file must end in .mp4 or .gif")
    gt = None
    if args.gt:
        rows = read_box_file(args.gt, widths=(4, 8))
        gt = vot_polygon_to_box(rows, args.vot_convention) if rows.shape[1] == 8 else rows
        if len(gt) != reader.metadata.num_frames:
            raise ConfigError(f"--eval {args.gt}: {len(gt)} boxes for the {reader.metadata.num_frames} frames of "
                              f"{args.video}")
    tracker = load_tracker(args.run_dir, args.device)
    bar = tqdm(total=reader.metadata.num_frames, unit="frame", file=sys.stderr)

    def progress(done: int, total: int, fps: float) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(fps=f"{fps:.1f}")

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
