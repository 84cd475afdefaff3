"""``tubelet data``: dataset utilities, one sub-subcommand each (``tubelet data synth ...``).

Each action is a pair ``add_<name>(sub)`` / ``run_<name>(args)`` registered in ``ACTIONS``.
"""

from __future__ import annotations

import argparse


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the procedural synthetic video set as video files + manifests")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--videos", type=int, required=True, help="number of clips (indices 0..N-1)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels")
    p.add_argument("--frames", type=int, default=None, help="frames per clip")
    p.add_argument("--classes", type=int, default=None, help="number of motion classes (2..8)")
    p.add_argument("--max-objects", type=int, default=None, help="objects per clip, at most (1..3)")
    p.add_argument("--fps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lossless", action="store_true", help="libx264rgb crf 0 in .mkv (bit-exact frames)")
    p.add_argument("--long-range", action="store_true",
                   help="the long-range task of memory models instead: --videos long videos whose label shows in "
                        "their first clip only (--clips clips of --frames frames each)")
    p.add_argument("--clips", type=int, default=5, help="--long-range: clips per long video")
    p.add_argument("--val-videos", type=int, default=0, help="--long-range: held-out videos written to val.csv")
    p.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    import dataclasses

    from tubelet.config.schema import SyntheticConfig
    from tubelet.data.synthetic import write_dataset
    from tubelet.errors import ConfigError

    if args.videos < 1:
        raise ConfigError(f"--videos must be at least 1, got {args.videos}")
    given = {
        "size": args.size, "frames": args.frames, "num_classes": args.classes, "max_objects": args.max_objects,
        "fps": args.fps, "seed": args.seed,
    }
    if args.long_range:
        return _write_long_range(args)
    cfg = dataclasses.replace(SyntheticConfig(), **{k: v for k, v in given.items() if v is not None})
    cfg = dataclasses.replace(cfg, min_objects=min(cfg.min_objects, cfg.max_objects))
    out = write_dataset(args.out, args.videos, cfg, lossless=args.lossless)
    kind = "lossless .mkv" if args.lossless else "H.264 .mp4"
    print(f"wrote {args.videos} {kind} clips ({cfg.frames} frames, {cfg.size}x{cfg.size}, {cfg.num_classes} classes) "
          f"to {out}: manifest.csv, train/val/test.csv, labels.txt, annotations.json")
    return 0


def _write_long_range(args: argparse.Namespace) -> int:
    from tubelet.data.builder import LONG_RANGE_HELD_OUT
    from tubelet.data.synthetic import write_long_range
    from tubelet.errors import ConfigError

    if args.lossless or args.max_objects is not None:
        raise ConfigError("--long-range writes H.264 long videos; --lossless and --max-objects do not apply")
    if args.clips < 2 or args.val_videos < 0:
        raise ConfigError(f"--long-range needs --clips of at least 2 and --val-videos of at least 0, got "
                          f"{args.clips} and {args.val_videos}")
    frames, size, classes = args.frames or 8, args.size or 32, args.classes or 4
    fps, seed = args.fps or 8, args.seed or 0
    out = write_long_range(args.out, args.videos, args.val_videos, seed=seed, num_clips=args.clips, clip_frames=frames,
                           size=size, num_classes=classes, fps=fps, held_out=LONG_RANGE_HELD_OUT)
    print(f"wrote {args.videos} + {args.val_videos} long videos ({args.clips} clips of {frames} frames, {size}x{size}, "
          f"{classes} classes, the cue in the first clip) to {out}: train.csv" + (", val.csv" if args.val_videos else "")
          + ", labels.txt")
    return 0


def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check every row or entry of a dataset (parse, path, decode, time range); report all bad ones")
    p.add_argument("source", metavar="SOURCE",
                   help="a manifest (CSV, JSONL, 'path label' list, Kinetics CSV) or a class-folder root root/<class>/<entry>")
    p.add_argument("--kind", default=None, choices=["manifest", "folders", "frames", "images"],
                   help="what the rows or entries are, as data.kind: videos (manifest, folders), frame folders "
                        "(frames) or images; default: manifest for a file, folders for a folder")
    p.add_argument("--root", default=None, help="data root: paths resolve under it and may not lead out of it")
    p.add_argument("--label-map", default=None, help="labels.txt or JSON label map for class-name labels")
    p.add_argument("--num-classes", type=int, default=None, metavar="K",
                   help="integer labels must lie in [0, K) (the recipe's model.num_classes); without it, only a "
                        "label map bounds them (negative ones are always bad)")
    p.add_argument("--frames-fps", type=float, default=30.0, help="frame rate of frame folders (data.frames_fps)")
    p.add_argument("--fast", action="store_true", help="open each file only; skip the full decode")
    p.add_argument("--backend", default="pyav", choices=["pyav", "torchcodec", "auto"])
    p.set_defaults(run=run_check)


def _opener(args: argparse.Namespace, kind: str):
    """How the dataset of ``kind`` opens an entry, so the check reads it as training would."""
    from functools import partial

    from tubelet.data.datasets import FrameFolderReader, ImageReader
    from tubelet.data.decoding import open_video

    if kind == "frames":
        return partial(FrameFolderReader, fps=args.frames_fps, root=args.root)
    if kind == "images":
        return ImageReader
    return partial(open_video, backend=args.backend)


def _past_end(sample, duration) -> str | None:
    """Why a row's ``start``/``end`` lies past its video's end (``None`` when it does not). A start at
    or after the end leaves no frame; an end after it is cut to the end when the clip is sampled."""
    late = []
    if sample.start is not None and sample.start >= duration:
        late.append(f"start {float(sample.start):.3f} s")
    if sample.end is not None and sample.end > duration:
        late.append(f"end {float(sample.end):.3f} s")
    if not late:
        return None
    lo = float(sample.start or 0)
    hi = f"{float(sample.end):.3f}" if sample.end is not None else "end"
    return f"{' and '.join(late)} past the video's duration {float(duration):.3f} s (range [{lo:.3f}, {hi}) s)"


def _label_range_errors(samples: list, num_classes: int, row_errors: list[tuple[str, str]]) -> list:
    """The samples whose label is a class of ``--num-classes``; the others go to ``row_errors`` as invalid
    rows, in line order with the rows that did not parse."""
    from tubelet.data.datasets.labels import label_errors, label_range_message
    from tubelet.errors import ConfigError

    if num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {num_classes}")
    bad = set(label_errors(samples, num_classes))
    if not bad:
        return samples
    what = f"--num-classes {num_classes}"
    row_errors += [(samples[i].source, label_range_message(samples[i].source, samples[i].label, num_classes, what))
                   for i in sorted(bad)]
    row_errors.sort(key=lambda e: _line(e[0]))
    return [s for i, s in enumerate(samples) if i not in bad]


def _line(where: str) -> int:
    """The line of a ``manifest:line`` place (0 for a class folder), to list bad rows in file order."""
    tail = where.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def run_check(args: argparse.Namespace) -> int:
    """One line per bad row or entry (``where: reason``), then a summary; exit 1 when any is bad."""
    from pathlib import Path

    from tubelet.cli.probe import probe_reader
    from tubelet.config.schema import DataConfig
    from tubelet.data.builder import source_samples
    from tubelet.errors import DataError

    kind = args.kind
    if kind is None:
        src = Path(args.source)
        if args.root and not src.is_absolute() and not src.exists():
            src = Path(args.root) / src
        kind = "folders" if src.is_dir() else "manifest"
    cfg = DataConfig(kind=kind, root=args.root, label_map=args.label_map, frames_fps=args.frames_fps)
    row_errors: list[tuple[str, str]] = []
    try:
        samples, _ = source_samples(cfg, args.source, row_errors=row_errors)
    except DataError as exc:
        if args.kind is None and kind == "folders":  # the kind was guessed: say which was read and the others
            raise DataError(f"{exc} (read as class folders of videos; pass --kind frames or --kind images for "
                            "frame folders or images)") from None
        raise
    if args.num_classes is not None:
        samples = _label_range_errors(samples, args.num_classes, row_errors)
    for _where, msg in row_errors:
        print(f"BAD {msg}", flush=True)
    opener = _opener(args, kind)
    bad_files = bad_ranges = damaged = 0
    for s in samples:
        rec, duration = probe_reader(s.path, opener, full=not args.fast)
        if not rec["ok"]:
            bad_files += 1
            print(f"BAD {s.source}: {s.path}: {rec['error']}", flush=True)
        elif rec["damage"] is not None:  # decodes, but FFmpeg concealed damage (data.on_damaged decides)
            damaged += 1
            print(f"BAD {s.source}: {s.path}: damaged: {rec['damage']}", flush=True)
        elif (late := _past_end(s, duration)) is not None:
            bad_ranges += 1
            print(f"BAD {s.source}: {s.path}: {late}", flush=True)
    total = len(samples) + len(row_errors)
    n_bad = len(row_errors) + bad_files + damaged + bad_ranges
    # damage is looked for in decoded videos only: not with --fast, nor in frame folders or images
    looked = "" if args.fast or kind in ("frames", "images") else f"{damaged} damaged files, "
    print(f"checked {total} rows: {total - n_bad} ok, {n_bad} bad ({len(row_errors)} invalid rows, {bad_files} "
          f"unreadable files, {looked}{bad_ranges} time ranges past the video's end)")
    return 1 if n_bad else 0


# action name -> parser builder; each builder sets ``run`` on its parser.
ACTIONS = {
    "synth": add_synth,
    "check": add_check,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset utilities (synth, check)")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    for add in ACTIONS.values():
        add(actions)
    p.set_defaults(run=lambda args: _missing_action(p))


def _missing_action(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2
