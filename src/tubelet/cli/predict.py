"""``tubelet predict VIDEO... --run RUN_DIR`` (or ``--checkpoint W --config RECIPE``): top-k classes per file.

Each file is seen as ``tubelet test`` sees a test video (``data.test_clips`` x ``data.test_crops``
views through the recipe's test transforms, softmax scores averaged); the work is
``tubelet.engine.predict``. Output: a table, or with ``--json`` one JSON object per file on stdout
(``path``, ``topk`` [{label, name, score}], ``num_views``; ``error`` for a file that cannot be read).
A file that cannot be read is also one line on stderr and does not stop the others. Exit status: 1
when any file failed, else 0.

``--stream`` runs each video clip by clip in time order (``data.num_frames x data.sampling_rate``
windows), carrying a memory model's memory from clip to clip, and prints one JSON line per clip
(``path``, ``clip``, ``num_clips``, ``start``, ``end`` in seconds, ``topk``) with a progress bar on stderr.

``--per-clip`` prints each clip's ``[start, end)`` seconds and top-k labels, one line per clip (decoding
one window at a time: any length of video in constant memory); with ``--json`` the ``--stream`` lines.
``--realtime`` (with ``--per-clip`` or ``--stream``) adds one line per file: seconds of video classified
per second of wall clock (decoding included) and whether that keeps up with the video's frame rate.

``--runtime torch-export|onnxruntime|aoti|executorch --exported FILE`` classifies with a program made by
``tubelet export`` instead of the weights (``--run`` or ``--config`` then gives the test pipeline and
class names); ``--threads`` sets that runtime's intra-op threads.

``data.KEY=VALUE`` and ``trainer.KEY=VALUE`` overrides among the files change the test pipeline and the
device (``data.test_clips=3``, ``trainer.accelerator=cpu``); the model and method come from the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tubelet.engine.predict import Prediction


def add_parser(sub: argparse._SubParsersAction) -> None:
    from tubelet.export import RUNTIMES

    p = sub.add_parser("predict", help="top-k classes of video files from a run folder or checkpoint + recipe")
    p.add_argument("paths", nargs="+", metavar="VIDEO",
                   help="video files; data.KEY=VALUE / trainer.KEY=VALUE items override the test pipeline")
    p.add_argument("--run", dest="run_dir", default=None, metavar="RUN_DIR",
                   help="run folder of `tubelet fit` (config.yaml, method.safetensors, labels.txt)")
    p.add_argument("--checkpoint", default=None, help="training checkpoint, method.safetensors or backbone.safetensors")
    p.add_argument("--config", "-c", default=None, help="the recipe the checkpoint was trained with")
    p.add_argument("--topk", type=int, default=5, help="classes per file (capped at the number of classes)")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    p.add_argument("--stream", action="store_true",
                   help="run each video clip by clip in time order (memory carried from clip to clip): one JSON "
                        "line per clip on stdout with its [start, end) seconds, a progress bar on stderr")
    p.add_argument("--per-clip", action="store_true",
                   help="top-k labels of every clip with its [start, end) seconds, one window decoded at a time")
    p.add_argument("--realtime", action="store_true",
                   help="with --per-clip/--stream: whether classification keeps up with each video's frame rate")
    p.add_argument("--runtime", default="eager", choices=RUNTIMES,
                   help="where the model runs: eager PyTorch (default) or an exported program (--exported)")
    p.add_argument("--exported", default=None, metavar="FILE", help="program of `tubelet export` (.pt2/.onnx/.aoti.pt2/.pte)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the runtime")
    p.set_defaults(run=run, overrides=[], overrides_anywhere=True)  # cli.main collects those after the options


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """The files and the ``key=value`` overrides among ``items``: an item with ``=`` is an override unless
    a file of that name exists."""
    from pathlib import Path

    overrides = [x for x in items if "=" in x and not Path(x).exists()]
    return [x for x in items if x not in overrides], overrides


def format_prediction(pred: Prediction, width: int = 0) -> str:
    """A file's block of the table: its path and views, then one row per class (rank, index, name, score)."""
    rows = [f"{pred.path}  ({pred.num_views} views)"]
    rows += [f"  {r:>2}  {i:>4}  {(n if n is not None else str(i)):<{width}}  {s:.4f}"
             for r, (i, n, s) in enumerate(pred.topk, 1)]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from tubelet.config import load_recipe
    from tubelet.engine import load_predictor
    from tubelet.errors import ConfigError

    if args.run_dir is not None and (args.checkpoint is not None or args.config is not None):
        raise ConfigError("--run takes the model from the run folder; do not give --checkpoint or --config with it")
    exported = args.runtime != "eager"
    if args.run_dir is None and not exported and (args.checkpoint is None or args.config is None):
        raise ConfigError("give --run RUN_DIR, or --checkpoint FILE with --config RECIPE")
    if exported and args.run_dir is None and args.config is None:
        raise ConfigError(f"--runtime {args.runtime}: give --run RUN_DIR or --config RECIPE for the test pipeline")
    if args.realtime and not (args.per_clip or args.stream):
        raise ConfigError("--realtime measures clip-by-clip classification: give it with --per-clip or --stream")
    if args.per_clip and args.stream:
        raise ConfigError("give --per-clip or --stream, not both (--per-clip --json prints --stream's lines)")
    paths, overrides = split_overrides(args.paths)
    overrides += list(args.overrides)
    if not paths:
        raise ConfigError("no video files given (only overrides)")
    recipe = load_recipe(args.config, overrides) if args.config is not None else None
    if args.threads is not None and args.runtime == "eager":
        import torch

        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    predictor = load_predictor(args.run_dir, args.checkpoint, recipe, overrides=overrides, runtime=args.runtime,
                               exported=args.exported, threads=args.threads)
    if predictor.class_names is None:
        print(f"tubelet predict: note: {args.run_dir or args.checkpoint} has no class names (no labels.txt or "
              "data.label_map); classes are printed as indices", file=sys.stderr)
    if args.stream or args.per_clip:
        return _stream(predictor, paths, args.topk, as_json=args.stream or args.json, realtime=args.realtime,
                       progress=args.stream)
    width = max((len(n) for n in predictor.class_names or []), default=4)
    failed = 0
    for pred in predictor.predict(paths, topk=args.topk):
        if pred.error is not None:
            failed += 1
            reason = " ".join(pred.error.split())  # one line per file, whatever the decoder said
            print(f"tubelet predict: error: {pred.path}: {reason}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(pred.as_dict()), flush=True)
        elif pred.error is None:
            print(format_prediction(pred, width), flush=True)
    return 1 if failed else 0


def format_clip(pred) -> str:
    """``--per-clip``'s line: the path, the clip's ``[start, end)`` seconds and its top-k ``name score``."""
    top = ", ".join(f"{n if n is not None else i} {s:.4f}" for i, n, s in pred.topk)
    return f"{pred.path}  [{pred.start:8.3f}, {pred.end:8.3f}) s  clip {pred.clip + 1}/{pred.num_clips}  {top}"


def realtime_summary(path: str, video_seconds: float, wall: float, fps: float, threads: int | None) -> dict:
    """``--realtime``: seconds of video classified per wall-clock second, and whether that keeps up."""
    speed = video_seconds / wall if wall > 0 else float("inf")
    return {"path": path, "video_seconds": video_seconds, "wall_seconds": wall, "video_fps": fps,
            "realtime_factor": speed, "frames_per_second": speed * fps, "keeps_up": speed >= 1.0,
            "threads": threads}


def _stream(predictor, paths: list[str], topk: int, as_json: bool = True, realtime: bool = False,
            progress: bool = True) -> int:
    """``--stream`` / ``--per-clip``: a line per clip on stdout (JSON, or ``format_clip``), with ``--stream``
    a one-line progress bar on stderr, with ``realtime`` a summary line per file; a file that cannot be
    read is one error line and the next file goes on."""
    import time

    import torch

    from tubelet.errors import VideoError

    failed = 0
    for path in paths:
        total = [0]
        video = [0.0, 0.0]

        def start(n: int, total: list[int] = total) -> None:
            total[0] = n

        def opened(duration, fps, video: list[float] = video) -> None:
            video[0], video[1] = float(duration), float(fps)

        try:
            t0 = time.perf_counter()
            for pred in predictor.stream(path, topk=topk, on_start=start, on_video=opened):
                print(json.dumps(pred.as_dict()) if as_json else format_clip(pred), flush=True)
                if progress:
                    done = pred.clip + 1
                    bar = "#" * (20 * done // max(total[0], 1))
                    print(f"\r{path}: [{bar:<20}] {done}/{total[0]} clips", end="", file=sys.stderr, flush=True)
            wall = time.perf_counter() - t0
            if progress:
                print(file=sys.stderr, flush=True)
            if realtime:
                threads = getattr(getattr(predictor.method, "runner", None), "threads", None) or torch.get_num_threads()
                r = realtime_summary(path, video[0], wall, video[1], threads)
                if as_json:
                    print(json.dumps({"realtime": r}), flush=True)
                else:
                    print(f"{path}: realtime: {r['video_seconds']:.2f} s of video in {wall:.2f} s on {threads} "
                          f"threads = {r['realtime_factor']:.2f}x real time ({r['frames_per_second']:.1f} frames/s "
                          f"against the video's {r['video_fps']:.2f}): "
                          f"{'keeps up' if r['keeps_up'] else 'does not keep up'}", flush=True)
        except VideoError as exc:
            failed += 1
            print(f"\ntubelet predict: error: {path}: {' '.join(str(exc.reason).split())}", file=sys.stderr,
                  flush=True)
    return 1 if failed else 0
